"""best.safetensors and `finetune convert` on a disk that refuses the write (full, or a file-size limit):
one clear error, no partial or temporary file, the earlier file kept."""

import pytest

pytest.importorskip("resource")

from conftest import file_size_limit  # noqa: E402
from finetune import Checkpointer, create_model  # noqa: E402
from finetune.errors import CheckpointError, WeightsError  # noqa: E402
from finetune.train import write_deployment_files  # noqa: E402
from finetune.weights.tools import convert  # noqa: E402


def state() -> dict:
    return {"model": create_model("squeezenet1_1", num_classes=2).state_dict(), "arch": "squeezenet1_1",
            "classes": ["cat", "dog"], "img_size": 32, "epoch": 0, "step": 1}


def test_best_safetensors_too_large_is_one_error_and_keeps_the_earlier_file(tmp_path):
    write_deployment_files(state(), tmp_path)
    before = (tmp_path / "best.safetensors").read_bytes()
    with file_size_limit(100_000), pytest.raises(CheckpointError, match=r"cannot write '.*best\.safetensors': File too "
                                                 r"large.*checkpoints are intact.*--resume auto"):
        write_deployment_files(state(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]  # no temporary file left
    assert (tmp_path / "best.safetensors").read_bytes() == before


@pytest.mark.filterwarnings("ignore:.*its input settings")
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_convert_too_large_is_one_error_and_leaves_no_file(tmp_path, suffix):
    src = Checkpointer(tmp_path / "run").save(state())
    out = tmp_path / "out"
    out.mkdir()
    with file_size_limit(100_000), pytest.raises(WeightsError, match=rf"cannot write '.*w{suffix}': File too large"):
        convert(src, out / f"w{suffix}")
    assert list(out.iterdir()) == []  # neither a partial w.pt nor w.pt.tmp
    convert(src, out / f"w{suffix}")  # the limit gone: it converts
    assert [p.name for p in out.iterdir()] == [f"w{suffix}"]
