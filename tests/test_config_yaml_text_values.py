"""A text setting (a path, a name) written unquoted in a YAML config keeps its text: YAML 1.1 reads `2024-01-15`
as a date, `010` as 8, `12:30` as 750 and `1.50` as 1.5, and a run directory or data folder of that name must
not become another one in silence (or an error about a datetime)."""

import pytest

from finetune.config import load_config


@pytest.mark.parametrize("text", ["2024-01-15", "010", "12:30", "1.50", "2024_01", "0x1F", "2024-01-15T10:00:00"])
def test_unquoted_text_setting_keeps_its_text(tmp_path, text) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"out: {text}\nmodel: {text}\nfreeze: [{text}, layer1]\ntrain-only: {text}\n")
    cfg = load_config(path)
    assert (cfg.out, cfg.model, cfg.freeze, cfg.train_only) == (text, text, [text, "layer1"], [text])


def test_numbers_stay_numbers(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlr: 1.0e-3\nworkers: 2\nout: 2024\namp: off\n")
    cfg = load_config(path)
    assert (cfg.epochs, cfg.lr, cfg.workers, cfg.out, cfg.amp) == (3, 1e-3, "2", "2024", "off")


@pytest.mark.parametrize(("line", "want"), [("seed: 010", 10), ("keep-last: 0x10", None),
                                            ("save-every-minutes: 1:30", None)])
def test_a_number_setting_is_read_as_decimal(tmp_path, line, want) -> None:
    # YAML 1.1 reads 010 as octal 8, 0x10 as 16 and 1:30 as 90 (base 60): not what the line says
    from finetune.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(line + "\n")
    if want is None:
        with pytest.raises(ConfigError, match="must be a"):
            load_config(path)
    else:
        assert load_config(path).seed == want


def test_merged_settings_and_lr_mult_are_read_as_written(tmp_path) -> None:
    # a merge key's settings are settings too, and lr-mult's patterns are text (`1.10` is layer 10 of block 1, not
    # '1.1') and its multipliers numbers read as decimal (010 is 10, not octal 8), as --lr-mult 1.10=010 reads them
    path = tmp_path / "c.yaml"
    path.write_text("<<: {out: 12:30, seed: 010}\nlr-mult: {1.10: 010, <<: {layer4: 0.5}}\n")
    cfg = load_config(path)
    assert (cfg.out, cfg.seed, cfg.lr_mult) == ("12:30", 10, {"1.10": 10.0, "layer4": 0.5})
