"""eval at 1,000+ classes: the confusion matrix is counted once (not a C x C tensor per batch) and --json
prints it a row per line (1,000 classes: not 1,000,000 lines)."""

import json

import torch

from finetune.cli import _print_json
from finetune.train import evaluate


class _Loader:
    def __init__(self, classes: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.classes = tuple(f"c{i}" for i in range(classes))
        self.device = torch.device("cpu")
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_confusion_counted_once_not_per_batch(monkeypatch) -> None:
    c = 40
    eye = torch.eye(c)
    # batch 0: true 1, 2, 3 predicted 0; batch 1: true 1 predicted 0, true 5 predicted 5; batch 2: true 2 predicted 7
    batches = [(eye[[0, 0, 0]], torch.tensor([1, 2, 3])), (eye[[0, 5]], torch.tensor([1, 5])),
               (eye[[7]], torch.tensor([2]))]
    sizes: list[int] = []
    real = torch.bincount

    def bincount(x, *args, minlength=0, **kwargs):
        sizes.append(minlength)
        return real(x, *args, minlength=minlength, **kwargs)

    monkeypatch.setattr(torch, "bincount", bincount)
    m = evaluate(torch.nn.Identity(), _Loader(c, batches), confusion=True)
    assert sizes.count(c * c) <= 1, f"a {c}x{c} count made {sizes.count(c * c)} times (once per batch)"
    assert m["confusion"][1][0] == 2 and m["confusion"][5][5] == 1 and sum(map(sum, m["confusion"])) == 6
    assert m["most_confused"] == [{"true": "c1", "predicted": "c0", "images": 2},
                                  {"true": "c2", "predicted": "c0", "images": 1},
                                  {"true": "c2", "predicted": "c7", "images": 1},
                                  {"true": "c3", "predicted": "c0", "images": 1}]


def test_json_confusion_a_row_per_line(capsys) -> None:
    c = 300
    res = {"top1": 0.5, "per_class": {f"c{i}": 0.5 for i in range(c)}, "confusion": [[0] * c for _ in range(c)],
           "most_confused": [{"true": "c1", "predicted": "c0", "images": 2}]}
    _print_json(res)
    text = capsys.readouterr().out
    assert json.loads(text) == res
    assert text.count("\n") < 3 * c, f"{text.count(chr(10))} lines for {c} classes"
    assert '\n    [0, 0, 0' in text


def test_eval_table_not_padded_to_a_very_long_class_name(monkeypatch, capsys) -> None:
    import importlib

    from finetune.cli import main

    long = "L" * 200
    result = {"top1": 0.5, "top5": 1.0, "topk": 2, "loss": 0.7, "images": 4,
              "per_class": {"cat": 1.0, long: 0.0}, "per_class_images": {"cat": 2, long: 2}, "most_confused": []}
    monkeypatch.setattr(importlib.import_module("finetune.train"), "evaluate_checkpoint", lambda *a, **kw: result)
    assert main(["eval", "--checkpoint", "run", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["cat", "100.00%", "(2/2)"] and len(lines[1]) < 80, lines[1]
    assert lines[2].startswith(f"  {long}") and lines[2].endswith("(0/2)")  # (the long name itself: whole)
