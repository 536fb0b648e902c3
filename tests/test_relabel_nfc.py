"""A checkpoint trained on class folders a Mac wrote (NFD: 'cafe' + U+0301) scored on a CSV that types the
name (NFC: 'caf' + U+00E9): folders already matched both ways; relabel (CSV eval) refused with
"has classes ['café'] that are not among the checkpoint's classes (..., 'café', ...)"."""

import numpy as np
from PIL import Image

from finetune.data.samples import Samples, eval_samples, relabel

NFD, NFC = "cafe\u0301", "caf\u00e9"


def test_relabel_matches_composed_and_decomposed_names() -> None:
    s = Samples.from_lists(["a.jpg", "b.jpg"], [0, 1], (NFC, "dog"))
    assert relabel(s, ["dog", NFD], "data/").labels.tolist() == [1, 0]


def test_eval_csv_typed_name_against_mac_folder_classes(tmp_path) -> None:
    for name in ("a", "b"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{name}.png")
    (tmp_path / "test.csv").write_text(f"path,label\na.png,{NFC}\nb.png,dog\n", encoding="utf-8")
    s = eval_samples(tmp_path / "test.csv", ["dog", NFD])
    assert s.classes == ("dog", NFD) and np.array_equal(s.labels, [1, 0])
