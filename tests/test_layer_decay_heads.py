"""--layer-decay gives every head the full learning rate, and auxiliary heads take no depth of their own."""

import torchvision

from finetune import create_model, param_groups


def _mult(model):
    return {n: g["lr_mult"] for g in param_groups(model, 1.0, layer_decay=0.5) for n in g["param_names"]}


def test_both_heads_of_a_distilled_model_without_timm_layer_ids_get_the_full_rate():
    m = create_model("timm:pit_ti_distilled_224", num_classes=3, img_size=64)  # PiT: no group_matcher
    mult = _mult(m)
    assert {mult[n] for n in ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")} == {1.0}
    assert mult["norm.weight"] == 0.5


def test_googlenet_aux_heads_do_not_push_the_last_block_down():
    m = torchvision.models.googlenet(num_classes=3, init_weights=False)
    mult = _mult(m)
    assert mult["fc.weight"] == 1.0
    assert mult["inception5b.branch1.conv.weight"] == 0.5  # the block before the head (not 0.5 ** 3)
    assert mult["aux1.conv.conv.weight"] == mult["inception5b.branch1.conv.weight"]
