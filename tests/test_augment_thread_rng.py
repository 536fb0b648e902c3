"""--auto-augment with --prefetch thread (and --prefetch cuda, where the augmentation runs in the prefetch
thread): torchvision's TrivialAugmentWide / RandAugment draw from torch's global generator, which the
training thread shares (dropout, drop-path). augment_hwc used to fork and seed that generator, so a draw of
the other thread in the middle of an augmentation took a number of the sample's seeded stream, and the
augmentation the next one: both depended on timing, and a resumed run was no longer the uninterrupted one.
Here the other thread's draw is made deterministic: it happens inside the augmentation's ops."""

from __future__ import annotations

import pytest
import torch

from finetune.data.transforms import _AUGMENT_CACHE, augment_hwc


@pytest.mark.parametrize("name", ["trivialaugment", "randaugment"])
def test_another_threads_draws_and_the_augmentation_do_not_mix(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    image = torch.randint(0, 256, (24, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    alone = [augment_hwc(image, name, seed) for seed in range(12)]
    torch.manual_seed(1)
    stream = torch.rand(100)  # what the training thread draws when nothing else touches the generator

    op = _AUGMENT_CACHE[name]
    apply = op._apply_image_or_video_transform
    drawn: list[torch.Tensor] = []

    def apply_while_the_other_thread_draws(*args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(torch.rand(()))  # (the training thread's dropout, between two of the augmentation's draws)
        return apply(*args, **kwargs)

    monkeypatch.setattr(op, "_apply_image_or_video_transform", apply_while_the_other_thread_draws)
    torch.manual_seed(1)
    mixed = [augment_hwc(image, name, seed) for seed in range(12)]
    assert all(torch.equal(a, b) for a, b in zip(alone, mixed, strict=True))
    assert torch.equal(torch.stack(drawn), stream[:len(drawn)])
