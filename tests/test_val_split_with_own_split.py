"""--val-split is the fraction held out where the data has no validation split: given with data that has one
(train/ and val/ folders, a CSV's 'val' rows), it is not used, and the run says so instead of taking it in silence."""

from __future__ import annotations

from pathlib import Path

from conftest import run_here, write_colour_folder

TINY = ["--model", "resnet18", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--epochs", "1",
        "--max-steps", "1", "--device", "cpu", "-q"]


def test_val_split_with_a_val_folder_is_named_as_unused(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=4)
    res = run_here("train", "--data", str(data), "--val-split", "0.3", "--out", str(tmp_path / "r"), *TINY)
    assert res.returncode == 0, res.stderr
    assert "--val-split 0.3 is not used" in res.stderr and "val/ folder" in res.stderr


def test_val_split_with_a_csv_split_column_is_named_as_unused_and_flat_folders_use_it(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", per_class=4)
    rows = ["path,label,split"] + [f"{p},{p.parent.name},{p.parent.parent.name}" for p in sorted(data.glob("*/*/*.jpg"))]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    res = run_here("train", "--data", str(tmp_path / "list.csv"), "--val-split", "0.3", "--out", str(tmp_path / "r"),
                   *TINY)
    assert res.returncode == 0, res.stderr
    assert "--val-split 0.3 is not used" in res.stderr and "'val'" in res.stderr
    flat = run_here("train", "--data", str(data / "train"), "--val-split", "0.3", "--out", str(tmp_path / "f"), *TINY)
    assert flat.returncode == 0 and "not used" not in flat.stderr, flat.stderr
