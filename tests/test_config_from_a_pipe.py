"""`finetune train --config <(...)` (or /dev/stdin from a pipe) reads the settings from the pipe; it used to say
the file does not exist. Something that is neither a file nor a pipe (a device) says so."""

import os
import threading

import pytest

from finetune.config import load_config
from finetune.errors import ConfigError


def test_config_from_a_named_pipe(tmp_path) -> None:
    fifo = tmp_path / "settings"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as f:
            f.write("epochs: 3\nbatch-size: 16\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    cfg = load_config(fifo)
    writer.join(timeout=10)
    assert (cfg.epochs, cfg.batch_size) == (3, 16)


def test_config_that_is_a_device() -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_config("/dev/null")
