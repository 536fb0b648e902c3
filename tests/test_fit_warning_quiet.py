"""The warning about tensors that keep random values points to -q only when the load report was not shown."""

from __future__ import annotations

import pytest

from finetune.config import TrainConfig
from finetune.models import create_model
from finetune.train import check_pretrained_fit
from finetune.weights import LoadReport


@pytest.mark.parametrize("quiet", [True, False])
def test_the_missing_tensors_warning_says_run_without_q_only_under_q(quiet: bool,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Without -q the load report is printed just above: 'run without -q to see the load report' was
    said to a run that had no -q."""
    model = create_model("resnet18", num_classes=3)
    names = [n for n in model.state_dict() if not n.startswith("fc.")]
    report = LoadReport(source="w.pt", loaded=names[1:], missing=names[:1])
    check_pretrained_fit(model, report, TrainConfig(model="resnet18", pretrained="w.pt"), quiet=quiet)
    err = capsys.readouterr().err
    assert "1 tensors outside the head keep their random values" in err
    assert ("run without -q" in err) is quiet
