"""Decoded-image stores for ``cache="ram"`` and ``cache="gpu"``.

An :class:`ImageStore` is one flat uint8 buffer holding every image as HWC at
a capped size (shorter side at most ``short_side``, a bit above the training
size), with offsets and sizes in numpy arrays. On CPU the buffer lives in
shared memory, so DataLoader workers fill it (each image once, the first time
it is drawn) and read it without copies or per-worker growth; later epochs
only crop, resize and flip. For eval loaders the store holds the final eval
crops, so a cached eval epoch equals an uncached one exactly.

>>> import numpy as np, torch
>>> store = ImageStore.allocate(np.array([2, 3]), np.array([4, 5]), torch.device("cpu"))
>>> store.put(1, torch.ones(3, 5, 3, dtype=torch.uint8))
>>> store.get(1).shape, bool(store.filled(1)), bool(store.filled(0)), store.nbytes
(torch.Size([3, 5, 3]), True, False, 69)
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch

from finetune.data.transforms import capped_size

EMPTY, FILLED, BAD = 0, 1, 2


def _shared_uint8(n: int) -> torch.Tensor:
    """A uint8 tensor of ``n`` bytes allocated directly in shared memory (no copy)."""
    storage = torch.UntypedStorage._new_shared(max(n, 1))
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (n,), (1,))


@dataclass
class ImageStore:
    """Images of known sizes in one flat uint8 buffer; ``state`` says which are filled.

    >>> import numpy as np, torch
    >>> from finetune.data.cache import ImageStore
    >>> store = ImageStore.allocate(np.array([2, 3, 2]), np.array([4, 5, 4]), torch.device("cpu"))
    >>> len(store), store.nbytes                          # 2*4*3 + 3*5*3 + 2*4*3 bytes
    (3, 93)
    >>> store.put(0, torch.full((2, 4, 3), 7, dtype=torch.uint8)); store.mark_bad(2)
    >>> [(store.filled(i), store.bad(i)) for i in range(3)], store.get(0)[1, 3].tolist()
    ([(True, False), (False, False), (False, True)], [7, 7, 7])
    """

    data: torch.Tensor  # uint8 [total], shared memory on CPU
    offsets: np.ndarray  # int64 [N]
    heights: np.ndarray  # int32 [N]
    widths: np.ndarray  # int32 [N]
    state: torch.Tensor  # uint8 [N] on CPU (shared): EMPTY, FILLED or BAD

    @classmethod
    def allocate(cls, heights: np.ndarray, widths: np.ndarray, device: torch.device) -> ImageStore:
        heights = np.asarray(heights, np.int32)
        widths = np.asarray(widths, np.int32)
        bad = heights.astype(np.int64) * widths == 0
        good_hw = set(zip(heights[~bad].tolist(), widths[~bad].tolist(), strict=True))
        if len(good_hw) == 1 and bad.any():  # one size for all: keep the layout a regular grid (see ``grid``)
            (h, w), = good_hw
            heights, widths = np.where(bad, h, heights).astype(np.int32), np.where(bad, w, widths).astype(np.int32)
        sizes = heights.astype(np.int64) * widths * 3
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        total = int(sizes.sum())
        if device.type == "cpu":
            data = _shared_uint8(total)
        else:
            data = torch.empty(total, dtype=torch.uint8, device=device)
        state = _shared_uint8(len(heights))
        state.zero_()
        state[torch.from_numpy(bad)] = BAD
        return cls(data, offsets, heights, widths, state)

    @functools.cached_property
    def grid(self) -> torch.Tensor | None:
        """Every image as one [N, H, W, 3] view when they all have one size (else None):
        a batch is then one ``index_select`` instead of one view per image. Sizes are fixed
        at allocation, so this is worked out once.

        >>> import numpy as np, torch
        >>> from finetune.data.cache import ImageStore
        >>> cpu = torch.device("cpu")
        >>> ImageStore.allocate(np.array([2, 0, 2]), np.array([4, 0, 4]), cpu).grid.shape   # 0x0: unreadable
        torch.Size([3, 2, 4, 3])
        >>> ImageStore.allocate(np.array([2, 3]), np.array([4, 4]), cpu).grid is None
        True
        """
        if len(self) == 0 or (self.heights != self.heights[0]).any() or (self.widths != self.widths[0]).any():
            return None
        return self.data.view(len(self), int(self.heights[0]), int(self.widths[0]), 3)

    @property
    def nbytes(self) -> int:
        return int(self.data.numel())

    def __len__(self) -> int:
        return len(self.offsets)

    def filled(self, i: int) -> bool:
        return int(self.state[i]) == FILLED

    def bad(self, i: int) -> bool:
        return int(self.state[i]) == BAD

    def get(self, i: int) -> torch.Tensor:
        """Image ``i`` as a HWC view into the store."""
        h, w = int(self.heights[i]), int(self.widths[i])
        o = int(self.offsets[i])
        return self.data[o:o + h * w * 3].view(h, w, 3)

    def put(self, i: int, image: torch.Tensor) -> None:
        """Store HWC ``image`` (its size must be the planned one) and mark it filled."""
        self.get(i).copy_(image)
        self.state[i] = FILLED

    def mark_bad(self, i: int) -> None:
        self.state[i] = BAD


def planned_sizes(sizes: list[tuple[int, int] | None], short_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(heights, widths) each image gets in the store; None (unreadable) gets 0x0.

    >>> planned_sizes([(500, 375), None], 256)
    (array([256,   0], dtype=int32), array([341,   0], dtype=int32))
    """
    hw = [capped_size(*s, short_side)[::-1] if s is not None else (0, 0) for s in sizes]
    arr = np.asarray(hw, np.int32).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def available_ram() -> int:
    """Bytes of RAM available now (MemAvailable), bounded by free space in /dev/shm.

    >>> from finetune.data.cache import available_ram
    >>> isinstance(available_ram(), int) and available_ram() > 0
    True
    """
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        st = os.statvfs("/dev/shm")
        avail = min(avail, st.f_bavail * st.f_frsize)
    except OSError:
        pass
    return avail


def free_gpu_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device (0 elsewhere).

    >>> import torch
    >>> from finetune.data.cache import free_gpu_memory
    >>> free_gpu_memory(torch.device("cpu"))
    0
    """
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)
