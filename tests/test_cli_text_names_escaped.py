"""The plain-text outputs of predict, eval and cam printed file and class names raw: a name with a newline
split one prediction over two lines, a terminal escape in it coloured the terminal. Such names are printed
escaped (as Python writes a string); --json gives them exactly."""

import importlib
import json
import types

import pytest

from finetune.cli import main

ODD = "odd\nname\x1b[31m.jpg"
TRAIN = importlib.import_module("finetune.train")  # (finetune.train is also the function)


def test_predict_prints_one_line_per_image_with_odd_names_escaped(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fake_predict(checkpoint, inputs, **kw):
        return [{"path": p, "top": [{"class": "r\ted", "index": 0, "prob": 0.75}, {"class": "blue", "index": 1,
                                                                                   "prob": 0.25}]} for p in inputs]

    monkeypatch.setattr(TRAIN, "predict_files", fake_predict)
    assert main(["predict", "--checkpoint", "run", ODD, "plain.jpg", "-q"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        r"'odd\nname\x1b[31m.jpg': 'r\ted' 0.750  blue 0.250",
        "plain.jpg: 'r\\ted' 0.750  blue 0.250",
    ]
    assert main(["predict", "--checkpoint", "run", ODD, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == ODD  # (JSON: the name exactly)


def test_eval_escapes_odd_class_names(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    result = {"top1": 0.5, "top5": 1.0, "topk": 2, "loss": 0.7, "images": 4,
              "per_class": {"blue": 1.0, "r\ned": 0.0}, "per_class_images": {"blue": 2, "r\ned": 2},
              "most_confused": [{"true": "r\ned", "predicted": "blue", "images": 2}]}
    monkeypatch.setattr(TRAIN, "evaluate_checkpoint", lambda *a, **kw: result)
    assert main(["eval", "--checkpoint", "run", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["  blue      100.00%  (2/2)", r"  'r\ned'     0.00%  (0/2)",
                         "most confused (true -> predicted: images):", r"  'r\ned' -> blue: 2"]


def test_cam_escapes_an_odd_output_folder(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    report = types.SimpleNamespace(records=[{"layer": "layer4"}], out_dir="cam\nout", localisation=None)
    monkeypatch.setattr("finetune.cam.explain", lambda *a, **kw: report)
    assert main(["cam", "run", "a.jpg", "--out", "cam\nout", "-q"]) == 0
    assert capsys.readouterr().out.splitlines() == [r"gradcam from layer 'layer4': 1 overlay in 'cam\nout'"]
