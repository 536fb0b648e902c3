"""An unknown flag of a command points at that command's --help, which lists its flags."""

from __future__ import annotations

import pytest

from finetune.cli import main


@pytest.mark.parametrize(("args", "points_at"), [
    (["train", "--bogus"], "'finetune train --help'"),
    (["eval", "--checkpoint", "x.pt", "--bogus"], "'finetune eval --help'"),
    (["--bogus"], "'finetune --help'"),
])
def test_unknown_flag_points_at_the_commands_help(args: list[str], points_at: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("finetune: error: unrecognized arguments: --bogus") and points_at in line, line
