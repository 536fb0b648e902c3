"""A file of weights that is no finetune checkpoint (TorchScript, torch.export, legacy torch.save) given
to eval / predict / train --resume is named for what it is, in one line: not "truncated", and no
warning of torch's before it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_here


def _torchscript(path: Path) -> None:
    torch.jit.save(torch.jit.trace(nn.Linear(2, 2), torch.zeros(1, 2)), str(path))


def _export(path: Path) -> None:
    torch.export.save(torch.export.export(nn.Linear(2, 2), (torch.zeros(1, 2),)), str(path))


def _legacy(path: Path) -> None:
    torch.save(nn.Linear(2, 2).state_dict(), path, _use_new_zipfile_serialization=False)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # (torch.jit's deprecation, when the file is written)
@pytest.mark.parametrize(("write", "name", "what"), [(_torchscript, "model.pt", "a TorchScript archive"),
                                                      (_export, "model.pt2", "a torch.export archive"),
                                                      (_legacy, "model.pth", "a legacy (not zip) torch.save file")])
def test_other_weights_files_are_named_in_one_line(tmp_path: Path, write, name: str, what: str) -> None:
    path = tmp_path / name
    write(path)
    for args in (["eval", "--checkpoint", str(path)], ["predict", "--checkpoint", str(path), str(path)],
                 ["train", "--resume", str(path), "--out", str(tmp_path / "run")]):
        res = run_here(*args)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"finetune: error: checkpoint '{path}': {what}"), res.stderr
        assert "not a finetune checkpoint" in lines[0] and "truncated" not in lines[0]
