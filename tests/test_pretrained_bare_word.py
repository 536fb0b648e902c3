"""A --pretrained / read_checkpoint source that is a bare word or a timm tag and no file (a misspelt source name)
is told the names weights are given by; a path or a weights file name that does not exist is only said not to."""

from __future__ import annotations

import re

import pytest

from finetune.errors import CheckpointError
from finetune.weights import read_checkpoint

HINT = " (weights by name are 'torchvision', 'torchvision:TAG' or 'timm:NAME')"


@pytest.mark.parametrize(("source", "hint"), [("timmm", True), ("resnet50.a1_in1k", True), ("runs/a/best.pt", False),
                                              ("weights.pth", False)])
def test_a_missing_source_is_told_the_named_sources_only_when_it_reads_as_a_name(tmp_path, monkeypatch, source: str,
                                                                                 hint: bool) -> None:
    monkeypatch.chdir(tmp_path)
    expected = f"{source}: no such file or folder" + (HINT if hint else "")
    with pytest.raises(CheckpointError, match=f"^{re.escape(expected)}$"):
        read_checkpoint(source)
