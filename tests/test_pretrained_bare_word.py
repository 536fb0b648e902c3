"""A --pretrained / read_checkpoint source that is a bare word and no file (a misspelt source name) is told the
names weights are given by; a path that does not exist is only said not to exist."""

from __future__ import annotations

import pytest

from finetune.errors import CheckpointError
from finetune.weights import read_checkpoint


def test_a_bare_word_that_is_no_file_is_told_the_named_sources(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"^timmm: no such file or folder \(weights by name are 'torchvision'"):
        read_checkpoint("timmm")
    with pytest.raises(CheckpointError, match=r"^runs/a/best.pt: no such file or folder$"):
        read_checkpoint("runs/a/best.pt")


def test_a_timm_tag_that_is_no_file_is_told_the_named_sources(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"'timm:NAME'\)$"):
        read_checkpoint("resnet50.a1_in1k")
    with pytest.raises(CheckpointError, match=r"^weights.pth: no such file or folder$"):
        read_checkpoint("weights.pth")
