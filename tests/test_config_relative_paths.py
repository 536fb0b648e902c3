"""A relative path in a --config file (`data: ../ds`) is taken relative to the current directory, not to the
file's folder; when it does not exist there, the error used to be the one of a flag ("data path '../ds' does
not exist"), naming neither the config file nor what the path was taken relative to."""

import os
from pathlib import Path

import pytest

from finetune.cli import build_parser
from finetune.config import config_from_args
from finetune.errors import ConfigError


def merged(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_a_relative_path_that_is_not_there_names_the_file_and_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "exp" / "weights").mkdir(parents=True)
    (tmp_path / "exp" / "weights" / "w.pt").write_bytes(b"")
    config = tmp_path / "exp" / "c.yaml"
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    for text, name, there in (("data: ../ds\n", "data", tmp_path / "ds"),
                              ("pretrained: weights/w.pt\n", "pretrained", tmp_path / "exp" / "weights" / "w.pt"),
                              ("data: ../no-such\n", "data", None)):
        config.write_text(text)
        with pytest.raises(ConfigError) as e:
            merged("--config", str(config))
        message = str(e.value)
        assert message.startswith(f"{config}: {name} '"), message
        assert f"relative to the current directory ({os.getcwd()})" in message
        assert (f"'{there}'" in message) == (there is not None), message
    # relative to the current directory, it is read; a flag given instead is not the file's
    monkeypatch.chdir(tmp_path / "exp")
    config.write_text("data: ../ds\n")
    assert merged("--config", str(config)).data == "../ds"
    config.write_text("data: ../no-such\npretrained: timm:resnet18\n")
    assert merged("--config", str(config), "--data", "shapes").data == "shapes"
