"""A fork of a process whose loader has workers (os.fork, a fork-context Pool) leaves them to that process."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from PIL import Image

from finetune import build_loader


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_breaks_the_parents_workers_nor_uses_them() -> None:
    items = [(Image.new("RGB", (8, 8), (i, 0, 0)), i) for i in range(6)]
    loader = build_loader(items, train=False, img_size=8, batch_size=2, workers=1)
    first = [y.tolist() for _, y in loader]
    pid = os.fork()
    if pid == 0:  # the child: its own pass (its own workers), then close(), as a `with` block's end would
        try:
            ok = [y.tolist() for _, y in loader] == first
            loader.close()
        except BaseException:
            ok = False
        sys.stdout.flush()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # (was: AssertionError "can only test a child process")
    # (was: the parent's next pass hung for ever: the child's close() had set its workers' stop event)
    assert [y.tolist() for _, y in loader] == first
    loader.close()
    assert torch.utils.data.get_worker_info() is None
