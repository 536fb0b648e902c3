"""A make_shapes (or a first `finetune train` filling the dataset cache) killed with kill -9 leaves its
temporary folder beside the dataset: the next make_shapes of that dataset removes it, not another live
process's folder."""

import os
import subprocess
import sys

from finetune.data.shapes import _writer_tag, make_shapes


def test_temp_folders_of_dead_writers_are_removed(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process id that is no longer in use
    host = _writer_tag().rsplit("-", 1)[0]
    dead = tmp_path / f".shapes.{host}-{child.pid}.abc_1234"
    (dead / "train" / "star").mkdir(parents=True)
    (dead / "train" / "star" / "star_00000.jpg").write_bytes(b"half a dataset")
    live = tmp_path / f".shapes.{host}-{os.getppid()}.xyz_5678"  # another process drawing it now
    elsewhere = tmp_path / f".shapes.otherhost-{child.pid}.xyz_9999"  # another machine's (a shared home folder)
    elsewhere.mkdir()
    live.mkdir()
    other = tmp_path / ".other.1.abc"  # not ours
    other.mkdir()
    make_shapes(tmp_path / "shapes", per_class=1, val_per_class=1, size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, elsewhere.name, other.name, "shapes"])
