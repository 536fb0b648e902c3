"""YAML merge keys (`<<: *anchor`) are valid YAML: the duplicate-key check must not call the file invalid, and a
key given after the merge overrides the merged one (YAML's rule), not a key given twice."""

from finetune.config import load_config


def test_merge_key(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("<<: {epochs: 3, lr: 0.1}\nlr: 0.2\nlr-mult: {<<: {fc: 2.0}, layer4: 0.5}\n")
    cfg = load_config(path)
    assert (cfg.epochs, cfg.lr, cfg.lr_mult) == (3, 0.2, {"fc": 2.0, "layer4": 0.5})
