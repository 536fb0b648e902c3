"""A run's config.yaml is written all or nothing: a full disk (here a file-size limit) leaves no empty or
cut-off config.yaml (which `--resume auto` would then send to `--config RUN/config.yaml`, which refuses it),
and a resume that cannot rewrite it keeps the run's settings."""

import pytest

pytest.importorskip("resource")

from conftest import file_size_limit  # noqa: E402
from finetune.config import TrainConfig, load_config, save_config  # noqa: E402


@pytest.mark.parametrize("earlier", [False, True])
def test_failed_config_write_leaves_the_earlier_file_or_none(tmp_path, earlier):
    path = tmp_path / "config.yaml"
    if earlier:
        save_config(TrainConfig(epochs=3, model="resnet18"), path)
    before = path.read_bytes() if earlier else None
    with file_size_limit(100), pytest.raises(OSError):
        save_config(TrainConfig(epochs=5, model="resnet50"), path)
    assert [p.name for p in tmp_path.iterdir()] == (["config.yaml"] if earlier else [])  # no temporary file
    if earlier:
        assert path.read_bytes() == before and load_config(path).epochs == 3
