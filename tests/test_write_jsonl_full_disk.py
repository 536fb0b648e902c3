"""metrics.jsonl is rewritten all or nothing: a write that fails (a full disk) leaves the earlier file as it was
and no temporary file beside it in the run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.logging import write_jsonl


def test_a_failed_rewrite_leaves_the_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_jsonl(path, [{"epoch": 0}])

    def records():
        yield {"epoch": 0}
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_jsonl(path, records())
    assert path.read_text() == '{"epoch": 0}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
