"""Commands other than `train` under torchrun: one refusal line, not the command run once per process
(eval/predict/cam printed everything twice; convert and cam wrote the same files from both at once)."""

from __future__ import annotations

import pytest

from finetune.cli import main


@pytest.mark.parametrize("argv", [["eval", "--checkpoint", "/nonexistent.pt"],
                                  ["predict", "--checkpoint", "/nonexistent.pt", "a.jpg"],
                                  ["convert", "/nonexistent.pt", "/nonexistent.safetensors"]])
def test_one_process_commands_refuse_torchrun(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"finetune: error: finetune {argv[0]} runs in one process, not under torchrun (WORLD_SIZE=2 is set): "
                   f"run finetune {argv[0]} without torchrun (only finetune train uses several processes)\n")


def test_one_process_commands_run_without_torchrun(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["eval", "--checkpoint", "/nonexistent.pt"]) == 2
    assert "torchrun" not in capsys.readouterr().err
