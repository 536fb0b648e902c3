"""Under torchrun, a process that failed (another process was killed: "lost its connection") is sent
SIGTERM by torchrun while it cleans up (its data workers stopped by the loaders' finalizers as the
error's frames go). That SIGTERM raised KeyboardInterrupt inside the finalizer: "Exception ignored in:
<finalize object ...> Traceback ... KeyboardInterrupt" on stderr after the one error line, and the
workers' shutdown cut short (leaked semaphores)."""

from __future__ import annotations

import argparse
import os
import signal
import weakref

import pytest

from finetune import FinetuneError
from finetune.cli import _run


def test_sigterm_while_a_failed_command_cleans_up_does_not_interrupt_the_cleanup(
        capsys: pytest.CaptureFixture[str]) -> None:
    done: list[bool] = []

    class Loader:  # (what a Loader's weakref.finalize does: stop its workers when the error's frames go)
        pass

    def cleanup() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun stopping the other processes
        done.append(True)

    def handler(args: argparse.Namespace) -> int:
        loader = Loader()
        weakref.finalize(loader, cleanup)
        raise FinetuneError("another of the 2 processes of this torchrun run stopped")

    before = signal.getsignal(signal.SIGTERM)
    assert _run(argparse.Namespace(handler=handler), debug=False) == 2
    assert done == [True]
    assert capsys.readouterr().err == "finetune: error: another of the 2 processes of this torchrun run stopped\n"
    assert signal.getsignal(signal.SIGTERM) == before
