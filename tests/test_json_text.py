"""The CLI's --json writer: the same JSON as json.dumps (keys included), number lists on one line."""
import json

from finetune.cli import _json_text


def test_same_json_as_json_dumps_keys_included():
    obj = {True: 1, None: [1, 2.5], 1.5: "a", 'q"uote': {3: [[1, 0], [0, 1]]}, "rows": [{"k": False}], "e": {}}
    out = _json_text(obj)
    assert json.loads(out) == json.loads(json.dumps(obj))
    assert '"true": 1' in out and '"null": [1, 2.5]' in out


def test_number_lists_on_one_line():
    out = _json_text({"confusion": [[1, 0], [2, 3]], "shape": [64, 3, 7, 7]})
    assert "[1, 0]" in out and "[64, 3, 7, 7]" in out
    assert len(out.splitlines()) == 7
