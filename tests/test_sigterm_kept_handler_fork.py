"""After a stop by SIGTERM, GracefulExit's handler stays installed a while (the stop's repeat is ignored). A
process forked from there later (a library user's multiprocessing after finetune.train returned) inherited it
and ignored its first SIGTERM as a data worker does during training: Process.terminate() did not end it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from finetune.checkpoint import GracefulExit


def test_a_process_forked_after_a_sigterm_stop_ends_on_terminate() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        with GracefulExit(announce=False) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            assert stop.stop_requested
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
        child.start()
        time.sleep(0.5)
        child.terminate()
        child.join(10)
        alive = child.is_alive()
        if alive:
            child.kill()
            child.join()
        assert not alive and child.exitcode == -signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, before)
