"""A resume drops what earlier invocations logged to TensorBoard after the checkpoint from the event files
themselves: ``purge_step`` hid it only from TensorBoard's Python loader, and ``tensorboard --logdir`` (its
default Rust data server) showed a superseded line's later epochs (scalars and images) as part of the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.logging import RunLog


def _summaries(tb: Path) -> list[tuple[str, int]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [(v.tag, e.step) for path in sorted(tb.glob("*tfevents*"))
            for e in EventFileLoader(str(path)).Load() for v in e.summary.value]


def test_resume_drops_the_earlier_line_after_the_checkpoint(tmp_path: Path) -> None:
    log = RunLog(tmp_path, tensorboard=True, quiet=True)
    for step in (1, 2, 3):  # epochs 0-2 of the first line
        log.scalar("val/top1", step / 10, step)
        log.images("cam/val", np.zeros((1, 4, 4, 3), np.uint8), step)
    log.close()
    RunLog(tmp_path, tensorboard=True, quiet=True, purge_step=2).close()  # resumed at the end of epoch 0
    assert sorted(_summaries(tmp_path / "tb")) == [("cam/val", 1), ("val/top1", 1)]
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "tb").iterdir()) == ["events", "events"]  # no temp file


def test_events_that_cannot_be_rewritten_are_a_warning_not_a_stopped_resume(tmp_path: Path, monkeypatch) -> None:
    import pytest

    import finetune.logging

    def damaged(tb_dir: Path, step: int, *, graphs: bool = False) -> int:
        raise OSError("Input/output error")

    monkeypatch.setattr(finetune.logging, "drop_events_from", damaged)
    with pytest.warns(UserWarning, match=r"could not remove the TensorBoard events at epochs >= 2 .*Input/output"):
        RunLog(tmp_path, tensorboard=True, quiet=True, purge_step=2).close()
    assert list((tmp_path / "tb").glob("*tfevents*"))  # the run logs on


def test_a_run_started_again_from_scratch_keeps_one_graph(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from finetune.models import create_model

    model, image = create_model("resnet18", num_classes=2).eval(), __import__("torch").zeros(1, 3, 32, 32)
    for _ in range(2):  # the first invocation was killed before its first checkpoint; the second starts over
        log = RunLog(tmp_path, tensorboard=True, quiet=True, purge_step=1, new_graph=True)
        assert log.graph(model, image) is None
        log.scalar("val/top1", 0.5, 1)
        log.close()
    events = [e for p in sorted((tmp_path / "tb").glob("*tfevents*")) for e in EventFileLoader(str(p)).Load()]
    assert sum(e.HasField("graph_def") for e in events) == 1
    tags = [(v.tag, e.step) for e in events for v in e.summary.value]
    assert [t for t in tags if t[0] == "val/top1"] == [("val/top1", 1)]
    assert len(tags) == len(set(tags))  # (the graph's run metadata once too)
