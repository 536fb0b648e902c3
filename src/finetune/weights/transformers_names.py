"""Hugging Face transformers' image classifiers under torchvision's / timm's names.

``ResNetForImageClassification`` (``microsoft/resnet-50``), ``ViTForImageClassification``
(``google/vit-base-patch16-224``), ``DeiTForImageClassification[WithTeacher]`` (``facebook/deit-*``),
``ConvNextForImageClassification`` (``facebook/convnext-tiny-224``), ``ConvNextV2ForImageClassification``
(``facebook/convnextv2-tiny-1k-224``), ``SwinForImageClassification``
(``microsoft/swin-tiny-patch4-window7-224``), ``Swinv2ForImageClassification``
(``microsoft/swinv2-tiny-patch4-window8-256``), ``Dinov2Model`` / ``Dinov2ForImageClassification``
(``facebook/dinov2-small``) and ``BeitForImageClassification`` (``microsoft/beit-base-patch16-224``; also
``Data2VecVisionForImageClassification``, ``facebook/data2vec-vision-base-ft1k``, BEiT's network) and
``RegNetForImageClassification`` / ``RegNetModel`` (``facebook/regnet-y-040``), ``EfficientNetForImageClassification``
(``google/efficientnet-b0``) and ``MobileViTForImageClassification`` (``apple/mobilevit-small``) are the networks of
torchvision's / timm's ``resnet*``, timm's ``vit_*`` / ``deit_*``,
``convnext_*``, ``convnextv2_*``, ``swin_*``, ``swinv2_*``, ``vit_*_dinov2``, ``beit_*``, ``regnetx_*`` / ``regnety_*``, ``tf_efficientnet_b*``
and ``mobilevit_*`` (transformers converted them from there, or from their originals; a ViT
also torchvision's ``vit_*``) under other names: ``resnet.embedder.embedder.convolution`` for ``conv1``, ``classifier.1`` for ``fc``,
a ViT's separate ``query`` / ``key`` / ``value`` for timm's ``qkv``, a Swin stage's patch merging at its
end (timm's at the start of the next stage). :func:`from_transformers` renames them (and joins q/k/v),
so that such a file loads like any other; files of other layouts are returned as they are.

>>> import torch
>>> sd, note = from_transformers({"resnet.embedder.embedder.convolution.weight": torch.zeros(1),
...                               "resnet.encoder.stages.1.layers.0.shortcut.normalization.bias": torch.zeros(1),
...                               "resnet.encoder.stages.3.layers.1.layer.2.convolution.weight": torch.zeros(1),
...                               "classifier.1.weight": torch.zeros(1)})
>>> sorted(sd), note
(['conv1.weight', 'fc.weight', 'layer2.0.downsample.1.bias', 'layer4.1.conv3.weight'], "Hugging Face transformers ResNet names converted to torchvision's / timm's (resnet.embedder.embedder.convolution -> conv1, classifier.1 -> fc, ...)")
>>> from_transformers({"fc.weight": torch.zeros(1)})[1] is None
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

StateDict = dict[str, Tensor]

#: (regex, replacement) on the names under the model's own prefix ('resnet.', 'vit.', ...), as re.sub takes them
_RESNET = [
    (r"^embedder\.embedder\.convolution\.", "conv1."),
    (r"^embedder\.embedder\.normalization\.", "bn1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
    (r"^classifier\.1\.", "fc."),
]
# RegNet (facebook/regnet-*: RegNetForImageClassification under 'regnet.', RegNetModel without a prefix): timm's
# regnetx_* / regnety_*, which transformers converted from; a Y layer's squeeze-excite is its layer.2 (conv3 its layer.3)
_REGNET = [
    (r"^embedder\.embedder\.convolution\.", "stem.conv."),
    (r"^embedder\.embedder\.normalization\.", "stem.bn."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"s{int(m[1]) + 1}.b{int(m[2]) + 1}.downsample.conv."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"s{int(m[1]) + 1}.b{int(m[2]) + 1}.downsample.bn."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.2\.attention\.([02])\.",
     lambda m: f"s{int(m[1]) + 1}.b{int(m[2]) + 1}.se.fc{int(m[3]) // 2 + 1}."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.(convolution|normalization)\.",
     lambda m: f"s{int(m[1]) + 1}.b{int(m[2]) + 1}.conv{min(int(m[3]), 2) + 1}."  # (X: layer.2; Y: layer.3)
               f"{dict(convolution='conv', normalization='bn')[m[4]]}."),
    (r"^classifier\.1\.", "head.fc."),
]
# EfficientNet (google/efficientnet-b*: EfficientNetForImageClassification under 'efficientnet.'): timm's
# tf_efficientnet_b* (both the TF original's network); the blocks (numbered through, timm's by stage) by _efficientnet_blocks
_EFFICIENTNET = [
    (r"^embeddings\.convolution\.", "conv_stem."),
    (r"^embeddings\.batchnorm\.", "bn1."),
    (r"^encoder\.top_conv\.", "conv_head."),
    (r"^encoder\.top_bn\.", "bn2."),
]
#: an EfficientNet block's layers (with its expansion: timm's InvertedResidual; without: DepthwiseSeparableConv)
_EFFICIENTNET_BLOCK = {
    True: {"expansion.expand_conv": "conv_pw", "expansion.expand_bn": "bn1", "depthwise_conv.depthwise_conv": "conv_dw",
           "depthwise_conv.depthwise_norm": "bn2", "squeeze_excite.reduce": "se.conv_reduce",
           "squeeze_excite.expand": "se.conv_expand", "projection.project_conv": "conv_pwl",
           "projection.project_bn": "bn3"},
    False: {"depthwise_conv.depthwise_conv": "conv_dw", "depthwise_conv.depthwise_norm": "bn1",
            "squeeze_excite.reduce": "se.conv_reduce", "squeeze_excite.expand": "se.conv_expand",
            "projection.project_conv": "conv_pw", "projection.project_bn": "bn2"},
}
# MobileViT (apple/mobilevit-*: MobileViTForImageClassification under 'mobilevit.'): timm's mobilevit_xxs / _xs / _s,
# both converted from Apple's ml-cvnets; a stage's inverted residuals (layer.0-1: layer.M; layer.2-4: downsampling_layer)
# as timm's stages.N.M bottlenecks, a MobileViT block's layers as stages.N.1's
_MOBILEVIT_CONVS = {"expand_1x1": "conv1_1x1", "conv_3x3": "conv2_kxk", "reduce_1x1": "conv3_1x1", "conv_kxk": "conv_kxk",
                    "conv_projection": "conv_proj", "fusion": "conv_fusion"}
_MOBILEVIT_LAYER = {"convolution": "conv", "normalization": "bn"}
_MOBILEVIT = [
    (r"^conv_stem\.(convolution|normalization)\.", lambda m: f"stem.{_MOBILEVIT_LAYER[m[1]]}."),
    (r"^encoder\.layer\.([01])\.layer\.(\d+)\.(expand_1x1|conv_3x3|reduce_1x1)\.(convolution|normalization)\.",
     lambda m: f"stages.{m[1]}.{m[2]}.{_MOBILEVIT_CONVS[m[3]]}.{_MOBILEVIT_LAYER[m[4]]}."),
    (r"^encoder\.layer\.(\d+)\.downsampling_layer\.(expand_1x1|conv_3x3|reduce_1x1)\.(convolution|normalization)\.",
     lambda m: f"stages.{m[1]}.0.{_MOBILEVIT_CONVS[m[2]]}.{_MOBILEVIT_LAYER[m[3]]}."),
    (r"^encoder\.layer\.(\d+)\.(conv_kxk|conv_projection|fusion)\.(convolution|normalization)\.",
     lambda m: f"stages.{m[1]}.1.{_MOBILEVIT_CONVS[m[2]]}.{_MOBILEVIT_LAYER[m[3]]}."),
    (r"^encoder\.layer\.(\d+)\.conv_1x1\.convolution\.", r"stages.\1.1.conv_1x1."),
    (r"^encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.layernorm_before\.", r"stages.\1.1.transformer.\2.norm1."),
    (r"^encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.layernorm_after\.", r"stages.\1.1.transformer.\2.norm2."),
    (r"^encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.attention\.output\.dense\.",
     r"stages.\1.1.transformer.\2.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.intermediate\.dense\.", r"stages.\1.1.transformer.\2.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.output\.dense\.", r"stages.\1.1.transformer.\2.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.layernorm\.", r"stages.\1.1.norm."),
    (r"^conv_1x1_exp\.(convolution|normalization)\.", lambda m: f"final_conv.{_MOBILEVIT_LAYER[m[1]]}."),
    (r"^classifier\.", "head.fc."),
]
_VIT = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
# DeiT: ViT's names, a distillation token and, distilled, two heads (DeiTForImageClassificationWithTeacher)
_DEIT = [
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^cls_classifier\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
    *_VIT,
]
_SWIN = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"layers.\1.blocks.\2.norm1."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"layers.\1.blocks.\2.norm2."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_bias_table$",
     r"layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.", r"layers.\1.blocks.\2.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.", r"layers.\1.blocks.\2.mlp.fc2."),
    # transformers merges patches at the end of stage N (as the original Swin), timm (>= 0.9) at the start of N + 1
    (r"^encoder\.layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head.fc."),
]
# Swin V2 (microsoft/swinv2-*: Swinv2ForImageClassification under 'swinv2.'): Swin's names, the cosine attention's
# logit_scale, the continuous position bias MLP for the table, no key bias (query / value biases: timm's q_bias / v_bias)
_SWINV2 = [
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.logit_scale$", r"layers.\1.blocks.\2.attn.logit_scale"),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.continuous_position_bias_mlp\.",
     r"layers.\1.blocks.\2.attn.cpb_mlp."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.query\.bias$", r"layers.\1.blocks.\2.attn.q_bias"),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.value\.bias$", r"layers.\1.blocks.\2.attn.v_bias"),
    *_SWIN,
]
# DINOv2 (facebook/dinov2-*: Dinov2Model, saved without a prefix; Dinov2ForImageClassification under 'dinov2.',
# Dinov2WithRegistersForImageClassification under 'dinov2_with_registers.')
_DINOV2 = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "reg_token"),  # (Dinov2WithRegistersModel: facebook/dinov2-with-registers-*)
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.fc1."),  # (giant's SwiGLU, packed as timm's)
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
]  # (Dinov2ForImageClassification's classifier reads [CLS] and the patch mean side by side: no timm head; kept)

# BEiT (microsoft/beit-*: BeitForImageClassification under 'beit.'): ViT's names, no key bias (q_bias / v_bias apart),
# layer scale as lambda_1/2, a relative position table per layer (or one shared), the mean-pooled norm as the pooler's
_BEIT = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.lambda_([12])$", r"blocks.\1.gamma_\2"),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.bias$", r"blocks.\1.attn.q_bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.bias$", r"blocks.\1.attn.v_bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.relative_position_bias\.relative_position_bias_table$",
     r"blocks.\1.attn.relative_position_bias_table"),
    (r"^encoder\.relative_position_bias\.relative_position_bias_table$", "rel_pos_bias.relative_position_bias_table"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^pooler\.layernorm\.", "fc_norm."),
    (r"^classifier\.", "head."),
]

#: separate query / key / value (regex, its 'part' group) joined into one qkv tensor (the name, as Match.expand takes it)
_VIT_QKV = (r"^encoder\.layer\.(\d+)\.attention\.attention\.(?P<part>query|key|value)\.(weight|bias)$",
            r"blocks.\1.attn.qkv.\3")
_QKV = {"ViT": _VIT_QKV, "DeiT": _VIT_QKV, "Dinov2": _VIT_QKV,
        "Beit": (r"^encoder\.layer\.(\d+)\.attention\.attention\.(?P<part>query|key|value)\.weight$",  # (no key bias)
                 r"blocks.\1.attn.qkv.weight"),
        "Swin": (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(?P<part>query|key|value)\.(weight|bias)$",
                 r"layers.\1.blocks.\2.attn.qkv.\4"),
        "Swinv2": (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(?P<part>query|key|value)\.weight$",
                   r"layers.\1.blocks.\2.attn.qkv.weight"),  # (no key bias)
        "MobileViT": (r"^encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.attention\.attention\."
                      r"(?P<part>query|key|value)\.(weight|bias)$", r"stages.\1.1.transformer.\2.attn.qkv.\4")}
#: tensors the timm model has no place for: buffers it computes itself, a token of masked-image pre-training only
_DROPPED = {"Swin": r"\.relative_position_index$", "Dinov2": r"^embeddings\.mask_token$",
            "Swinv2": r"\.relative_position_index$|\.relative_coords_table$|^embeddings\.mask_token$",
            "Beit": r"\.relative_position_index$|^embeddings\.mask_token$"}

_CONVNEXT = [
    (r"^embeddings\.patch_embeddings\.", "stem.0."),
    (r"^embeddings\.layernorm\.", "stem.1."),
    (r"^encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.", r"stages.\1.downsample.\2."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"stages.\1.blocks.\2.norm."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$", r"stages.\1.blocks.\2.gamma"),
    (r"^layernorm\.", "head.norm."),
    (r"^classifier\.", "head.fc."),
]
# ConvNeXt V2 (facebook/convnextv2-*: ConvNextV2ForImageClassification under 'convnextv2.'): ConvNeXt's names, no layer
# scale, a GRN after the MLP's activation (its 1x1x1xC weight and bias as timm's C: _fit_convnextv2)
_CONVNEXTV2 = [
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.", r"stages.\1.blocks.\2.mlp.grn."),
    *_CONVNEXT,
]

_DEIT_SHOWN = ("deit.encoder.layer.N -> blocks.N, query/key/value -> attn.qkv, distillation_token -> dist_token, "
               "cls_classifier / distillation_classifier -> head / head_dist")

#: (name, a key only that model's files have, its rules, what the note shows, whose names); Swin (V1, V2), DINOv2 and BEiT
#: come before ViT, whose marker their files have too (a file without a prefix tells them apart by the marker only)
_KINDS = (
    ("Swin", "encoder.layers.0.blocks.0.attention.self.relative_position_bias_table", _SWIN,
     "swin.encoder.layers.N.blocks.M -> layers.N.blocks.M, query/key/value -> attn.qkv, "
     "layers.N.downsample -> layers.N+1.downsample, classifier -> head.fc, relative_position_index dropped "
     "(timm computes it)", "timm's"),
    ("Swinv2", "encoder.layers.0.blocks.0.attention.self.logit_scale", _SWINV2,
     "swinv2.encoder.layers.N.blocks.M -> layers.N.blocks.M, query/key/value weights -> attn.qkv, query/value biases "
     "-> attn.q_bias/v_bias, continuous_position_bias_mlp -> attn.cpb_mlp, layers.N.downsample -> layers.N+1.downsample, "
     "classifier -> head.fc, relative_coords_table / relative_position_index dropped (timm computes them)", "timm's"),
    ("Dinov2", "encoder.layer.0.layer_scale1.lambda1", _DINOV2,
     "encoder.layer.N -> blocks.N, query/key/value -> attn.qkv, layer_scale1/2.lambda1 -> ls1/2.gamma, "
     "mask_token dropped, register_tokens -> reg_token with [CLS]'s position added to cls_token", "timm's"),
    ("Beit", "encoder.layer.0.lambda_1", _BEIT,
     "beit.encoder.layer.N -> blocks.N, query/key/value weights -> attn.qkv, query/value biases -> attn.q_bias/v_bias, "
     "lambda_1/2 -> gamma_1/2, pooler.layernorm -> fc_norm, classifier -> head, relative_position_index dropped "
     "(timm computes it)", "timm's"),
    ("RegNet", "embedder.embedder.convolution.weight", _REGNET,
     "regnet.encoder.stages.N.layers.M -> sN+1.bM+1, layer.2.attention -> se, classifier.1 -> head.fc", "timm's"),
    ("ResNet", "embedder.embedder.convolution.weight", _RESNET,
     "resnet.embedder.embedder.convolution -> conv1, classifier.1 -> fc", "torchvision's / timm's"),
    ("DeiT", "embeddings.distillation_token", _DEIT, _DEIT_SHOWN, "timm's"),  # (a distilled DeiTModel's: no prefix)
    ("ViT", "embeddings.patch_embeddings.projection.weight", _VIT,
     "vit.encoder.layer.N -> blocks.N, query/key/value -> attn.qkv, classifier -> head", "timm's"),
    ("DeiT", "embeddings.patch_embeddings.projection.weight", _DEIT, _DEIT_SHOWN, "timm's"),
    ("EfficientNet", "encoder.top_conv.weight", _EFFICIENTNET,
     "efficientnet.encoder.blocks.N -> blocks.S.M (by stage), top_conv / top_bn -> conv_head / bn2", "timm's"),
    ("MobileViT", "encoder.layer.2.fusion.convolution.weight", _MOBILEVIT,  # (MobileViT V2's layers have no fusion)
     "mobilevit.encoder.layer.N -> stages.N, expand_1x1/conv_3x3/reduce_1x1 -> conv1_1x1/conv2_kxk/conv3_1x1, "
     "transformer.layer.M -> stages.N.1.transformer.M, query/key/value -> attn.qkv, conv_projection / fusion -> "
     "conv_proj / conv_fusion, conv_1x1_exp -> final_conv, classifier -> head.fc", "timm's"),
    ("ConvNeXtV2", "encoder.stages.0.layers.0.grn.weight", _CONVNEXTV2,  # (before ConvNeXt: its marker too)
     "convnextv2.encoder.stages.N.layers.M -> stages.N.blocks.M, grn -> mlp.grn (1x1x1xC -> C), "
     "classifier -> head.fc", "timm's"),
    ("ConvNeXt", "embeddings.patch_embeddings.weight", _CONVNEXT,
     "convnext.encoder.stages.N.layers.M -> stages.N.blocks.M, classifier -> head.fc", "timm's"),
)

# torchvision's vit_* (conv_proj, encoder.layers.encoder_layer_N, q/k/v joined as self_attention.in_proj_*): what a
# transformers ViT file is renamed to when the model has torchvision's names (timm's otherwise)
_VIT_TORCHVISION = [
    (r"^embeddings\.cls_token$", "class_token"),
    (r"^embeddings\.position_embeddings$", "encoder.pos_embedding"),
    (r"^embeddings\.patch_embeddings\.projection\.", "conv_proj."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"encoder.layers.encoder_layer_\1.ln_1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"encoder.layers.encoder_layer_\1.ln_2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.encoder_layer_\1.self_attention.out_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.encoder_layer_\1.mlp.0."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.encoder_layer_\1.mlp.3."),
    (r"^layernorm\.", "encoder.ln."),
    (r"^classifier\.", "heads.head."),
]
#: by kind: (a name only torchvision's model has, the rules, the joined q/k/v (as _QKV), what the note shows)
_TORCHVISION = {
    "ViT": ("encoder.layers.encoder_layer_0.self_attention.in_proj_weight", _VIT_TORCHVISION,
            (_VIT_QKV[0], r"encoder.layers.encoder_layer_\1.self_attention.in_proj_\3"),
            "vit.encoder.layer.N -> encoder.layers.encoder_layer_N, query/key/value -> self_attention.in_proj_*, "
            "classifier -> heads.head"),
}

#: the prefixes a model's network is saved under, where not its name in lower case
_PREFIXES = {"Dinov2": ("dinov2.", "dinov2_with_registers."),  # (Dinov2WithRegistersForImageClassification's)
             "Beit": ("beit.", "data2vec_vision.")}  # (Data2VecVisionForImageClassification: BEiT's modules, copied)


#: kinds whose marker another kind's files have too: whether a file without a prefix (a ``*Model``'s) is this kind's,
#: by its marker tensor (RegNet's 3x3 stem, ResNet's 7x7)
_UNPREFIXED = {"RegNet": lambda stem: stem.ndim == 4 and stem.shape[-1] == 3}


def from_transformers(sd: StateDict, model_names: Iterable[str] = ()) -> tuple[StateDict, str | None]:
    """``sd`` under torchvision's / timm's names when it is a transformers ResNet, ViT, DeiT, ConvNeXt (V1, V2), Swin
    (V1, V2), DINOv2, BEiT, RegNet, EfficientNet or MobileViT (with its ``*ForImageClassification`` head or without, as ``ResNetModel`` saves it), and a note
    saying so; else ``(sd, None)``. Keys no rule knows (a ``pooler``, DINOv2's classifier on [CLS] and the
    patch mean side by side) are kept as they are; tensors timm has no place for (Swin's and BEiT's
    ``relative_position_index`` buffers, Swin V2's ``relative_coords_table``, DINOv2's and BEiT's ``mask_token``)
    are left out. A ViT takes torchvision's names when the model (``model_names``) has them (``vit_b_16``:
    ``conv_proj``, ``encoder.layers.encoder_layer_N``), timm's otherwise. A model
    that has transformers' names itself (``model_names``: a transformers model, or one wrapping it)
    takes the file as it is.

    A file that nests the transformers model (a Lightning module's ``model.resnet.…``) is read
    from under its outer prefix.

    >>> sd = {"embedder.embedder.convolution.weight": torch.zeros(1)}
    >>> list(from_transformers(sd)[0]), list(from_transformers(sd, ["resnet.embedder.embedder.convolution.weight"])[0])
    (['conv1.weight'], ['embedder.embedder.convolution.weight'])
    >>> list(from_transformers({"model.resnet.embedder.embedder.convolution.weight": torch.zeros(1),
    ...                         "model.classifier.1.bias": torch.zeros(1)})[0])
    ['conv1.weight', 'fc.bias']
    >>> list(from_transformers({"vit.embeddings.patch_embeddings.projection.weight": torch.zeros(1),
    ...                         "vit.layernorm.weight": torch.zeros(1), "vit.norm.weight": torch.zeros(1)})[0])
    ['vit.embeddings.patch_embeddings.projection.weight', 'vit.layernorm.weight', 'vit.norm.weight']
    """
    shapes = {n: tuple(getattr(s, "shape", s)) for n, s in model_names.items()} if isinstance(model_names, Mapping) else {}
    model_names, given = list(model_names), sd
    for kind, marker, rules, shown, whose in _KINDS:
        at = next((k[:-len(marker)] for k in sd if k == marker or k.endswith("." + marker)), None)
        if at is None:
            continue
        name = next((n for n in _PREFIXES.get(kind, (f"{kind.lower()}.",)) if at == n or at.endswith("." + n)), "")
        if at and not name:  # ('resnet.' of 'resnet.embedder...', not 'swin.' of HF's Swin)
            continue
        if not at and kind in _UNPREFIXED and not _UNPREFIXED[kind](sd[marker]):
            continue  # (a file without a prefix whose marker another kind's files have too)
        if _has(model_names, marker):
            return sd, None  # the model's own names
        qkv_rx, qkv_name = _QKV.get(kind, ("$^", ""))
        if kind in _TORCHVISION and _has(model_names, _TORCHVISION[kind][0]):  # (torchvision's vit_b_16, ...)
            _, rules, (qkv_rx, qkv_name), shown = _TORCHVISION[kind]
            whose = "torchvision's"
        outer = at.removesuffix(name)  # ('model.' of 'model.resnet.embedder...'; the head is beside 'resnet.')
        sd = {k[len(at):] if k.startswith(at) else k[len(outer):] if k.startswith(outer) else k: v
              for k, v in sd.items()}
        if kind == "EfficientNet":
            sd = _efficientnet_blocks(sd)
        compiled = [(re.compile(rx), replacement) for rx, replacement in rules]
        dropped = {k for k in sd if kind in _DROPPED and re.search(_DROPPED[kind], k)}
        out: StateDict = {}
        qkv: dict[str, dict[str, tuple[str, Tensor]]] = {}
        for k, v in sd.items():
            if k in dropped:
                continue
            if m := re.match(qkv_rx, k):
                qkv.setdefault(m.expand(qkv_name), {})[m["part"]] = (k, v)
                continue
            out[_rename(k, compiled)] = v
        for joined, parts in qkv.items():
            if set(parts) != {"query", "key", "value"}:  # not all three: keep the file's names
                out.update(parts.values())
                continue
            out[joined] = torch.cat([parts[p][1] for p in ("query", "key", "value")])
        if kind == "Dinov2" and {"reg_token", "cls_token", "pos_embed"} <= set(out):
            # transformers adds a position to [CLS] and none to the registers; timm's *_reg*_dinov2 add none to
            # either (no_embed_class): [CLS] takes its position now, as timm's own conversion of these files does
            out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
            out["pos_embed"] = out["pos_embed"][:, 1:]
        if kind == "ConvNeXtV2":
            out = _fit_convnextv2(out, shapes)
        if len(out) != len(sd) - len(dropped) - sum(len(p) - 1 for p in qkv.values() if len(p) == 3):
            return given, None  # two keys renamed onto one name: not the layout these rules are for
        note = f"Hugging Face transformers {kind} names converted to {whose} ({shown}, ...)"
        if kind == "MobileViT":  # (as Apple's ml-cvnets read them, with OpenCV)
            note += ("; transformers' MobileViTImageProcessor feeds these weights BGR images (do_flip_channel_order), "
                     "finetune RGB ones")
        return out, note
    return sd, None


def _fit_convnextv2(sd: StateDict, shapes: dict[str, tuple[int, ...]]) -> StateDict:
    """``sd`` (ConvNeXt V2's, under timm's names) with its GRN weights and biases (transformers' 1x1x1xC) as timm's C,
    and its pointwise Linear weights (out x in) as 1x1 convs (out x in x 1 x 1) where the model (``shapes``) has those:
    timm's ``convnextv2_atto`` ... ``_nano`` (``conv_mlp``), as timm's own conversion of these files does.

    >>> sd = _fit_convnextv2({"stages.0.blocks.0.mlp.grn.weight": torch.zeros(1, 1, 1, 8),
    ...                       "stages.0.blocks.0.mlp.fc1.weight": torch.zeros(8, 2)}, {"stages.0.blocks.0.mlp.fc1.weight": (8, 2, 1, 1)})
    >>> [tuple(v.shape) for v in sd.values()]
    [(8,), (8, 2, 1, 1)]
    """
    convs = [n for n, s in shapes.items() if len(s) == 4 and re.search(r"\.mlp\.fc[12]\.weight$", n)]
    return {k: v.reshape(-1) if re.search(r"\.mlp\.grn\.(weight|bias)$", k) and v.dim() == 4
            else v[:, :, None, None] if v.dim() == 2 and re.search(r"\.mlp\.fc[12]\.weight$", k) and _has(convs, k)
            else v for k, v in sd.items()}


def _efficientnet_blocks(sd: StateDict) -> StateDict:
    """``sd`` with a transformers EfficientNet's ``encoder.blocks.N.…`` under timm's ``blocks.S.M.…``: a stage is a
    run of blocks of one output width (the original's block2a, block2b, …, numbered through by transformers), a
    block without an ``expansion`` a depthwise-separable one (timm's ``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``).

    >>> z = torch.zeros
    >>> sorted(_efficientnet_blocks({"encoder.blocks.0.projection.project_conv.weight": z(16, 32, 1, 1),
    ...                              "encoder.blocks.1.expansion.expand_conv.weight": z(96, 16, 1, 1),
    ...                              "encoder.blocks.1.projection.project_conv.weight": z(24, 96, 1, 1),
    ...                              "encoder.blocks.2.projection.project_conv.weight": z(24, 24, 1, 1)}))
    ['blocks.0.0.conv_pw.weight', 'blocks.1.0.conv_pw.weight', 'blocks.1.0.conv_pwl.weight', 'blocks.1.1.conv_pw.weight']
    """
    rx = re.compile(r"^encoder\.blocks\.(\d+)\.(\w+\.\w+)\.(\w+)$")
    widths = {int(m[1]): v.shape[0] for k, v in sd.items()
              if (m := rx.match(k)) and m[2] == "projection.project_conv" and v.ndim}
    at, stage, index, width = {}, -1, 0, None
    for n in sorted(widths):
        stage, index = (stage, index + 1) if widths[n] == width else (stage + 1, 0)
        at[n], width = f"blocks.{stage}.{index}", widths[n]
    out = {}
    for k, v in sd.items():
        m = rx.match(k)
        layers = _EFFICIENTNET_BLOCK[f"encoder.blocks.{m[1]}.expansion.expand_conv.weight" in sd] if m else {}
        out[f"{at[int(m[1])]}.{layers[m[2]]}.{m[3]}" if m and int(m[1]) in at and m[2] in layers else k] = v
    return out


def _has(names: list[str], name: str) -> bool:
    """Whether ``names`` has ``name``, as it is or under a prefix."""
    return any(n == name or n.endswith("." + name) for n in names)


def _rename(key: str, compiled: list) -> str:
    for rx, replacement in compiled:
        renamed, hits = rx.subn(replacement, key, count=1)
        if hits:
            return renamed
    return key
