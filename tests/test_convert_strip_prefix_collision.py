"""`finetune convert --strip-prefix P` where a name without P is also in the file (`ema.fc.weight` beside `fc.weight`)
is refused, naming the pair, instead of writing one of the two tensors for that name and losing the other in silence
(was: the file's own `fc.weight` kept, `ema.fc.weight` dropped, beside `ema.fc.bias` stripped: a mix of two models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from finetune.errors import WeightsError
from finetune.weights import convert


def test_a_stripped_name_the_file_also_has_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "both.safetensors"
    save_file({"fc.weight": torch.zeros(2), "ema.fc.weight": torch.ones(2), "ema.fc.bias": torch.ones(2)}, str(src))
    with pytest.raises(WeightsError, match=r"removing 'ema\.' from 'ema\.fc\.weight' gives 'fc\.weight', a key the file "
                                           r"also has"):
        convert(src, tmp_path / "out.safetensors", strip_prefix="ema.")
    assert not (tmp_path / "out.safetensors").exists()
    # no name in common: stripped as before, the other keys kept
    save_file({"head.weight": torch.zeros(2), "ema.fc.weight": torch.ones(2)}, str(src))
    out = convert(src, tmp_path / "ok.safetensors", strip_prefix="ema")
    assert sorted(load_file(str(out))) == ["fc.weight", "head.weight"]
