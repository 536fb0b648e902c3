"""Build classifiers by name and give them a head for your classes.

Any torchvision classification model (``resnet18``, ``convnext_tiny``,
``efficientnet_b0``, ``vit_b_16``, …) or ``timm:NAME`` when timm is installed.
The head is found whatever the family calls it (``fc``, ``classifier.1``,
``heads.head``, ``head``) and sized for ``num_classes``.

>>> m = create_model("resnet18", num_classes=3)
>>> head_name(m), m.fc.out_features, m.finetune_arch
('fc', 3, 'resnet18')
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import inspect
import types
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finetune.errors import ConfigError, ModelError

TIMM_PREFIX = "timm:"


@functools.cache
def torchvision_models() -> tuple[str, ...]:
    """Names of torchvision's image classification models.

    >>> "resnet50" in torchvision_models()
    True
    """
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def list_models(include_timm: bool = False) -> list[str]:
    """All model names ``create_model`` accepts (timm's prefixed with ``timm:``).

    >>> from finetune import list_models
    >>> "convnext_tiny" in list_models()
    True
    """
    names = list(torchvision_models())
    if include_timm:
        try:
            import timm
        except ImportError:
            return names
        names += [TIMM_PREFIX + n for n in timm.list_models()]
    return names


def _unknown(name: str, candidates: list[str], what: str) -> ModelError:
    close = difflib.get_close_matches(name, candidates, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `finetune models` lists them"
    return ModelError(f"unknown {what} model '{name}'{hint}")


def check_model(model: object) -> None:
    """Raise :class:`ConfigError` unless ``model`` is a ``torch.nn.Module`` (a model's name or file is none).

    >>> check_model(nn.Linear(2, 2))
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a model (a torch.nn.Module), got {type(model).__name__} {model!r:.60}: build it "
                          "first, e.g. finetune.create_model('resnet18', num_classes=10)")


def create_model(name: str, num_classes: int, *, drop_rate: float | None = None,
                 img_size: int | None = None, drop_path: float | None = None,
                 global_pool: str | None = None) -> nn.Module:
    """Build ``name`` (randomly initialised) with a ``num_classes``-way head.

    Pretrained weights are loaded separately by :func:`finetune.load_weights`,
    which skips the old head because its shape differs. The model carries its
    architecture name in ``model.finetune_arch``. ``img_size``: models built for
    one input size (torchvision's ``vit_*`` and ``maxvit_t``, timm models with a
    fixed input size such as ViT, DeiT, Swin) are built for this size (their
    position embeddings then have another shape, which ``load_weights``
    resamples); other models take any size and ignore it. ``drop_rate``: the dropout before
    the classifier; ``drop_path``: stochastic depth (timm's ``drop_path_rate``, torchvision's
    ``stochastic_depth_prob``); asking either of a family without it is a :class:`ModelError`.
    ``global_pool``: a timm ViT's pooling, ``"token"`` (the class token after the final ``norm``) or
    ``"avg"`` (the mean of the patch tokens, then ``fc_norm``; no final ``norm``: MAE's fine-tuned ViTs);
    None: the model's own.

    >>> from finetune import create_model
    >>> create_model("mobilenet_v3_small", num_classes=5).classifier[-1].out_features
    5
    >>> create_model("convnext_tiny", num_classes=2, drop_path=0.2).features[7][2].stochastic_depth.p
    0.2
    >>> create_model("resnet18", num_classes=2, drop_path=0.1)
    Traceback (most recent call last):
    finetune.errors.ModelError: resnet18 has no drop-path (stochastic depth) setting: leave out drop_path (--drop-path)
    >>> type(create_model("timm:vit_tiny_patch16_224", num_classes=2, img_size=32, global_pool="avg").fc_norm).__name__
    'LayerNorm'
    >>> create_model("vit_b_16", num_classes=2, img_size=64).encoder.pos_embedding.shape
    torch.Size([1, 17, 768])
    >>> create_model("vit_b_16", num_classes=2, img_size=100)
    Traceback (most recent call last):
    finetune.errors.ModelError: vit_b_16 cannot be built for 100x100 images (Input shape indivisible by patch size!): use img_size=224 (--img-size), the size it was designed for
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ModelError(f"num_classes must be a whole number, at least 1, got {num_classes!r}")
    if global_pool is not None and global_pool not in GLOBAL_POOLS:
        raise ModelError(f"global_pool must be {' or '.join(GLOBAL_POOLS)}, got {global_pool!r}")
    if name.startswith(TIMM_PREFIX):
        model = _create_timm(name[len(TIMM_PREFIX):], num_classes, drop_rate, img_size, drop_path, global_pool)
    else:
        if global_pool is not None:
            raise ModelError(f"{name} has no global_pool setting (timm's ViTs have): leave out global_pool (--global-pool)")
        if name not in torchvision_models():
            raise _unknown(name, list(torchvision_models()), "torchvision")
        import torchvision

        kwargs: dict[str, object] = {"num_classes": num_classes}
        if img_size is not None and name.startswith("vit_"):
            kwargs["image_size"] = img_size
        elif img_size is not None and name.startswith("maxvit"):
            kwargs["input_size"] = (img_size, img_size)
        if name in ("googlenet", "inception_v3"):
            kwargs["init_weights"] = True  # today's default, said explicitly (else torchvision warns)
        if drop_rate is not None:
            kwargs["dropout"] = drop_rate
        if drop_path is not None:
            kwargs["stochastic_depth_prob"] = drop_path
        try:
            model = _get_torchvision(name, kwargs)
        except (AssertionError, ValueError) as e:  # vit_*: not a multiple of the patch; maxvit_t: of 224
            if img_size is None or not ("image_size" in kwargs or "input_size" in kwargs):
                raise
            reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise ModelError(f"{name} cannot be built for {img_size}x{img_size} images ({reason}): use img_size="
                             f"{_built_for_size(name)} (--img-size), the size it was designed for") from None
        except TypeError as e:  # a family without that argument
            what = "dropout" if "'dropout'" in str(e) else "drop-path (stochastic depth)"
            arg = "drop_rate (--dropout)" if what == "dropout" else "drop_path (--drop-path)"
            raise ModelError(f"{name} has no {what} setting: leave out {arg}") from None
        for arg, given, what, flag in (("dropout", drop_rate, "dropout", "drop_rate (--dropout)"),
                                       ("stochastic_depth_prob", drop_path, "drop-path (stochastic depth)",
                                        "drop_path (--drop-path)")):
            if given is not None and not _takes(model, arg):  # taken by **kwargs and ignored
                raise ModelError(f"{name} has no {what} setting: leave out {flag}")
        if drop_rate is not None and isinstance(model, (torchvision.models.VisionTransformer,
                                                        torchvision.models.SwinTransformer)):
            raise ModelError(f"{name} has no dropout before the classifier (torchvision's `dropout` of this family is "
                             "inside every encoder block): leave out drop_rate (--dropout), or use a timm model "
                             "(timm:NAME), whose drop_rate is the head's")
        if isinstance(model, torchvision.models.MNASNet):
            model._load_from_state_dict = types.MethodType(_mnasnet_load_from_state_dict, model)
    model.finetune_arch = name
    return model


def _mnasnet_load_from_state_dict(self: nn.Module, state_dict: dict[str, object], prefix: str,
                                  local_metadata: dict[str, object], *args: object) -> None:
    """torchvision's MNASNet refuses a state dict without torch's ``_metadata`` version (one
    read from safetensors, built key by key, or restored by ``check_input_size``): such a
    state dict is taken to be of the model's own version.

    >>> m = create_model("mnasnet0_5", num_classes=2)
    >>> m.load_state_dict(dict(m.state_dict()))
    <All keys matched successfully>
    """
    import torchvision

    if local_metadata.get("version") is None:
        local_metadata = {**local_metadata, "version": getattr(self, "_version", 2)}
    torchvision.models.MNASNet._load_from_state_dict(self, state_dict, prefix, local_metadata, *args)  # type: ignore[arg-type]


#: the poolings ``create_model(global_pool=...)`` builds a timm ViT with, as timm's keywords
GLOBAL_POOLS = {"token": {"global_pool": "token"}, "avg": {"global_pool": "avg", "fc_norm": True}}


def _get_torchvision(name: str, kwargs: dict[str, object]) -> nn.Module:
    """``torchvision.models.get_model(name, **kwargs)`` without weights; Swin / MaxViT, whose builders pass
    their own ``stochastic_depth_prob`` (swin_t 0.2, …), are built with it and then given the one asked for."""
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except TypeError as e:
        if "multiple values for keyword argument 'stochastic_depth_prob'" not in str(e):
            raise
    rate = float(kwargs.pop("stochastic_depth_prob"))  # type: ignore[arg-type]
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    _set_stochastic_depth(model, rate)
    return model


def _takes(model: nn.Module, arg: str) -> bool:
    """Whether a torchvision model's class has the keyword ``arg`` of its own: ConvNeXt (no dropout) and
    MobileNetV3 (no stochastic depth) take any keyword into ``**kwargs`` and ignore it."""
    return arg in inspect.signature(type(model).__init__).parameters


def _set_stochastic_depth(model: nn.Module, rate: float) -> None:
    """Give a torchvision model built with its builder's own ``stochastic_depth_prob`` the rate ``rate``:
    each block's probability is the rate times its depth's share (Swin: ``i / (blocks - 1)``, MaxViT:
    ``linspace(0, rate)``), the largest is the rate itself, so all scale by ``rate / largest``."""
    from torchvision.ops import StochasticDepth

    layers = [m for m in model.modules() if isinstance(m, StochasticDepth)]
    largest = max((m.p for m in layers), default=0.0)
    for m in layers:
        m.p = m.p * rate / largest if largest > 0 else rate


def _create_timm(name: str, num_classes: int, drop_rate: float | None, img_size: int | None,
                 drop_path: float | None = None, global_pool: str | None = None) -> nn.Module:
    try:
        import timm
        from timm.models import get_pretrained_cfg
    except ImportError:
        raise ModelError(f"'timm:{name}' needs timm: pip install timm") from None
    if not timm.is_model(name):
        raise _unknown(name, timm.list_models(), "timm")
    kwargs: dict[str, object] = {"num_classes": num_classes}
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    cfg = get_pretrained_cfg(name)
    if img_size is not None and cfg is not None and cfg.fixed_input_size and tuple(cfg.input_size[1:]) != (img_size, img_size):
        kwargs["img_size"] = img_size
    pool_failure = None
    if global_pool is not None:
        try:
            return timm.create_model(name, pretrained=False, **kwargs, **GLOBAL_POOLS[global_pool])
        except (TypeError, AssertionError, ValueError) as e:  # (the model without it says whether it was the pooling)
            pool_failure = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        bad = next((k for k in ("drop_path_rate", "drop_rate") if k in kwargs and f"'{k}'" in str(e)), None)
        if bad is None:
            raise
        arg = "drop_path (--drop-path)" if bad == "drop_path_rate" else "drop_rate (--dropout)"
        raise ModelError(f"timm:{name} has no {bad} setting: leave out {arg}") from None
    if pool_failure is not None:
        raise ModelError(f"timm:{name} cannot be built with global_pool={global_pool!r} ({pool_failure}): leave out "
                         "global_pool (--global-pool)")
    return model


def weights_global_pool(model: str, pretrained: str | None) -> str | None:
    """``"avg"`` when ``pretrained`` is a weights file that pools by average (``fc_norm.*`` and no final
    ``norm.*``: MAE's fine-tuned ViTs, ``{'model': ...}`` from its ``models_vit.py`` with ``global_pool=True``)
    and ``model`` is a timm model that pools by its class token (a final ``norm``, no ``fc_norm``) but can be
    built with ``create_model(global_pool="avg")``, whose tensors are then the file's; None otherwise (the
    model as it is). Reads the tensor names only (:func:`finetune.weights.formats.peek_names`).

    >>> weights_global_pool("timm:vit_tiny_patch16_224", "timm:vit_tiny_patch16_224") is None
    True
    """
    from pathlib import Path

    from finetune.weights.sources import is_named

    if not pretrained or is_named(pretrained) or not model.startswith(TIMM_PREFIX):
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        return None
    return _weights_global_pool(model, str(path.resolve()), path.stat().st_mtime_ns)


def _pools_by_average(names: set[str]) -> bool:
    """The names have an ``fc_norm`` and no final ``norm`` beside it (under whatever prefix)."""
    prefixes = {n[: -len("fc_norm.weight")] for n in names if n == "fc_norm.weight" or n.endswith(".fc_norm.weight")}
    return any(f"{p}norm.weight" not in names for p in prefixes)


@functools.lru_cache(maxsize=4)
def _weights_global_pool(model: str, path: str, mtime_ns: int) -> str | None:
    from pathlib import Path

    from finetune.weights.formats import peek_names

    if not _pools_by_average(peek_names(Path(path))):
        return None
    try:  # (on the meta device: names only, no memory, no init)
        with torch.device("meta"):
            own = set(create_model(model, num_classes=1).state_dict())
            avg = set(create_model(model, num_classes=1, global_pool="avg").state_dict())
    except Exception:  # noqa: BLE001 - cannot be built that way: the load report says why norm is missing
        return None
    pools_by_token = "norm.weight" in own and "fc_norm.weight" not in own
    return "avg" if pools_by_token and "fc_norm.weight" in avg and "norm.weight" not in avg else None


IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def clip_file_mean_std(pretrained: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``(mean, std)`` a CLIP weights file (a ViT's or ResNet's image tower under ``visual.``) was trained with: the
    ``preprocess_cfg`` of open_clip's ``open_clip_config.json`` beside it (or in the folder), else OpenAI's for
    OpenAI's own files (they keep ``input_resolution`` / ``context_length`` / ``vocab_size``); None for anything
    else (the model's own then: a ``timm:*_clip_*`` model's default tag may be a fine-tune with other values,
    ``vit_large_patch14_clip_224``'s 0.5 / 0.5). Reads a safetensors header or a pickle, not the tensors.

    >>> clip_file_mean_std("timm:vit_base_patch16_clip_224.openai") is None
    True
    """
    from pathlib import Path

    from finetune.weights.sources import is_named

    if not pretrained or is_named(pretrained):
        return None
    path = Path(pretrained)
    if not path.exists():
        return None
    return _clip_file_mean_std(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _clip_file_mean_std(path_str: str, mtime_ns: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    import json
    from pathlib import Path

    from finetune.weights.formats import peek_names

    path = Path(path_str)
    try:
        config = json.loads(((path if path.is_dir() else path.parent) / "open_clip_config.json").read_text("utf-8"))
        pre = config.get("preprocess_cfg", {})
        mean, std = pre.get("mean"), pre.get("std")
        if len(mean) == 3 and len(std) == 3:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
        pass
    names = peek_names(path) if path.is_file() else set()
    tower = any(n == f"visual.{m}" or n.endswith(f".visual.{m}") for n in names
                for m in ("class_embedding", "attnpool.positional_embedding"))  # (a ViT's, a ResNet's)
    openai = {"input_resolution", "context_length", "vocab_size"} <= names
    return OPENAI_CLIP_MEAN_STD if tower and openai else None


def _timm_weights_cfg(model: str, pretrained: str | None) -> tuple[bool, Any]:
    """(whether the weights are timm's, their ``pretrained_cfg`` or None when timm or the name is
    unknown): the ``pretrained_cfg`` of a weights folder's ``config.json`` (timm's hub format) or
    the timm source named by ``pretrained`` win over a timm model's default tag."""
    local_cfg = local_pretrained_cfg(pretrained)
    if local_cfg is not None:
        return True, local_cfg
    name = pretrained if pretrained and pretrained.startswith(TIMM_PREFIX) else model
    if not name.startswith(TIMM_PREFIX):
        return False, None
    try:
        from timm.models import get_pretrained_cfg

        return True, get_pretrained_cfg(name[len(TIMM_PREFIX):])
    except Exception:  # noqa: BLE001 - no timm, or an unknown name: reported where the model is built
        return True, None


def local_pretrained_cfg(pretrained: str | None) -> Any:
    """timm's ``pretrained_cfg`` (input size, crop, interpolation, mean, std) that a local weights
    folder carries in its ``config.json`` (timm's ``save_for_hf`` / ``push_to_hub`` layout; for a
    weights file, the ``config.json`` beside it; for a Hugging Face cache repository folder, its
    snapshot's), or that a finetune checkpoint records (a run continued from another run's
    weights takes its input as they were trained), as attributes; None for anything else.

    >>> import json, pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": {
    ...     "input_size": [3, 160, 160], "crop_pct": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    >>> cfg = local_pretrained_cfg(str(folder))
    >>> cfg.input_size, cfg.crop_pct, cfg.mean, cfg.interpolation
    ([3, 160, 160], 1.0, [0.5, 0.5, 0.5], None)
    >>> local_pretrained_cfg("timm:resnet18") is None
    True
    """
    import json
    from pathlib import Path

    from finetune.weights.sources import is_named

    if not pretrained or is_named(pretrained):
        return None
    path = Path(pretrained)
    if path.is_dir() and (path / "best.safetensors").is_file():  # a run directory: its weights are its best.safetensors
        own = _finetune_weights_cfg(str((path / "best.safetensors").resolve()), (path / "best.safetensors").stat().st_mtime_ns)
        if own is not None:
            return own
    if path.is_file() and path.suffix.lower() in (".pt", ".pth", ".ckpt", ".tar"):
        own = _finetune_checkpoint_cfg(str(path.resolve()), path.stat().st_mtime_ns)
        if own is not None:  # a finetune run's checkpoint: the input its weights were trained with
            return own
    if path.is_file() and path.suffix.lower() == ".safetensors":
        own = _finetune_weights_cfg(str(path.resolve()), path.stat().st_mtime_ns)
        if own is not None:  # a run's best.safetensors: the same settings, in its metadata
            return own
    folder = _weights_folder(path)
    if folder is None:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        config = None
    cfg = config.get("pretrained_cfg") if isinstance(config, dict) else None
    if not isinstance(cfg, dict):  # a Hugging Face transformers folder: its image processor's settings
        from finetune.weights.formats import image_processor_cfg

        return image_processor_cfg(folder)
    keys = ("input_size", "crop_pct", "interpolation", "crop_mode", "mean", "std", "fixed_input_size")
    return types.SimpleNamespace(**{k: cfg.get(k) for k in keys})


def _weights_folder(path: Any) -> Any:
    """The folder whose ``config.json`` describes the weights at ``path``: a folder itself, a file's own
    folder, a Hugging Face cache repository folder's snapshot; None when that snapshot is not clear."""
    folder = path if path.is_dir() else path.parent
    if (folder / "snapshots").is_dir():  # $HF_HUB_CACHE/models--ORG--NAME
        from finetune.weights.formats import hf_cache_snapshot

        try:
            return hf_cache_snapshot(folder)
        except Exception:  # noqa: BLE001 - no usable snapshot: reading the weights says so
            return None
    return folder


#: transformers' ResNet configs (``layer_type``, ``depths``) as the torchvision / timm ``resnet*`` their
#: weights load into (microsoft/resnet-18 ... -152)
_TRANSFORMERS_RESNETS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
                         ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
                         ("bottleneck", (3, 8, 36, 3)): "resnet152"}
#: transformers' ViT / DeiT / BEiT / DINOv2 sizes (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``)
#: as the size in timm's names (``vit_base_patch16_224``, ``deit_small_distilled_patch16_224``, ``vit_large_patch14_dinov2``)
_TRANSFORMERS_VIT_SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base",
                           (1024, 24, 16): "large", (1280, 32, 16): "huge", (1536, 40, 24): "giant"}
#: transformers' ConvNeXt (``depths``, ``hidden_sizes``) as timm's ``convnext_*`` (facebook/convnext-tiny-224 ...)
_TRANSFORMERS_CONVNEXTS = {((3, 3, 9, 3), (96, 192, 384, 768)): "tiny", ((3, 3, 27, 3), (96, 192, 384, 768)): "small",
                           ((3, 3, 27, 3), (128, 256, 512, 1024)): "base", ((3, 3, 27, 3), (192, 384, 768, 1536)): "large",
                           ((3, 3, 27, 3), (256, 512, 1024, 2048)): "xlarge"}
#: transformers' ConvNeXt V2 (``depths``, ``hidden_sizes``) as timm's ``convnextv2_*`` (facebook/convnextv2-atto-1k-224 ...;
#: timm's atto ... nano take the pointwise Linear weights as 1x1 convs, reshaped as they load)
_TRANSFORMERS_CONVNEXTV2S = {((2, 2, 6, 2), (40, 80, 160, 320)): "atto", ((2, 2, 6, 2), (48, 96, 192, 384)): "femto",
                             ((2, 2, 6, 2), (64, 128, 256, 512)): "pico", ((2, 2, 8, 2), (80, 160, 320, 640)): "nano",
                             ((3, 3, 9, 3), (96, 192, 384, 768)): "tiny", ((3, 3, 27, 3), (96, 192, 384, 768)): "small",
                             ((3, 3, 27, 3), (128, 256, 512, 1024)): "base", ((3, 3, 27, 3), (192, 384, 768, 1536)): "large",
                             ((3, 3, 27, 3), (352, 704, 1408, 2816)): "huge"}
#: transformers' Swin (``embed_dim``, ``depths``, ``num_heads``) as the size in timm's ``swin_*_patch4_window7_224`` (and
#: Swin V2's in ``swinv2_*_window8_256``)
_TRANSFORMERS_SWINS = {(96, (2, 2, 6, 2), (3, 6, 12, 24)): "tiny", (96, (2, 2, 18, 2), (3, 6, 12, 24)): "small",
                       (128, (2, 2, 18, 2), (4, 8, 16, 32)): "base", (192, (2, 2, 18, 2), (6, 12, 24, 48)): "large"}

#: transformers' MobileViT (``hidden_sizes``, ``neck_hidden_sizes``, ``expand_ratio``) as timm's ``mobilevit_*`` (apple/mobilevit-
#: xx-small, -x-small, -small: both converted from Apple's ml-cvnets)
_TRANSFORMERS_MOBILEVITS = {((64, 80, 96), (16, 16, 24, 48, 64, 80, 320), 2.0): "xxs",
                            ((96, 120, 144), (16, 32, 48, 64, 80, 96, 384), 4.0): "xs",
                            ((144, 192, 240), (16, 32, 64, 96, 128, 160, 640), 4.0): "s"}
#: what the others of a transformers MobileViT ``config.json`` are for timm's (missing: transformers' defaults)
_TRANSFORMERS_MOBILEVIT_BASE = {"num_channels": 3, "patch_size": 2, "num_attention_heads": 4, "mlp_ratio": 2.0,
                                "hidden_act": "silu", "conv_kernel_size": 3, "output_stride": 32, "qkv_bias": True}

#: transformers' RegNet (``depths``, ``hidden_sizes``, ``groups_width``) as timm's ``regnetx_*`` / ``regnety_*`` (by its
#: ``layer_type``) they were converted from (facebook/regnet-x-002 ... -320, regnet-y-002 ... -320, the SEER ones of timm's sizes)
_TRANSFORMERS_REGNETS = {
    ("x", (1, 1, 4, 7), (24, 56, 152, 368), 8): "002", ("x", (1, 2, 7, 12), (32, 64, 160, 384), 16): "004",
    ("x", (1, 3, 5, 7), (48, 96, 240, 528), 24): "006", ("x", (1, 3, 7, 5), (64, 128, 288, 672), 16): "008",
    ("x", (2, 4, 10, 2), (72, 168, 408, 912), 24): "016", ("x", (2, 6, 15, 2), (96, 192, 432, 1008), 48): "032",
    ("x", (2, 5, 14, 2), (80, 240, 560, 1360), 40): "040", ("x", (2, 4, 10, 1), (168, 392, 784, 1624), 56): "064",
    ("x", (2, 5, 15, 1), (80, 240, 720, 1920), 120): "080", ("x", (2, 5, 11, 1), (224, 448, 896, 2240), 112): "120",
    ("x", (2, 6, 13, 1), (256, 512, 896, 2048), 128): "160", ("x", (2, 7, 13, 1), (336, 672, 1344, 2520), 168): "320",
    ("y", (1, 1, 4, 7), (24, 56, 152, 368), 8): "002", ("y", (1, 3, 6, 6), (48, 104, 208, 440), 8): "004",
    ("y", (1, 3, 7, 4), (48, 112, 256, 608), 16): "006", ("y", (1, 3, 8, 2), (64, 128, 320, 768), 16): "008",
    ("y", (2, 6, 17, 2), (48, 120, 336, 888), 24): "016", ("y", (2, 5, 13, 1), (72, 216, 576, 1512), 24): "032",
    ("y", (2, 6, 12, 2), (128, 192, 512, 1088), 64): "040", ("y", (2, 7, 14, 2), (144, 288, 576, 1296), 72): "064",
    ("y", (2, 4, 10, 1), (168, 448, 896, 2016), 56): "080", ("y", (2, 5, 11, 1), (224, 448, 896, 2240), 112): "120",
    ("y", (2, 4, 11, 1), (224, 448, 1232, 3024), 112): "160", ("y", (2, 5, 12, 1), (232, 696, 1392, 3712), 232): "320",
    ("y", (2, 5, 12, 1), (328, 984, 1968, 4920), 328): "640", ("y", (2, 7, 17, 1), (528, 1056, 2904, 7392), 264): "1280",
}

#: transformers' EfficientNet (``width_coefficient``, ``depth_coefficient``, ``hidden_dim``) as timm's ``tf_efficientnet_b*``
#: (google/efficientnet-b0 ... -b7, from Keras' TF weights: 'same' padding and BatchNorm eps 1e-3, as timm's tf_ models)
_TRANSFORMERS_EFFICIENTNETS = {(1.0, 1.0, 1280): "b0", (1.0, 1.1, 1280): "b1", (1.1, 1.2, 1408): "b2",
                               (1.2, 1.4, 1536): "b3", (1.4, 1.8, 1792): "b4", (1.6, 2.2, 2048): "b5",
                               (1.8, 2.6, 2304): "b6", (2.0, 3.1, 2560): "b7"}
#: the fields of a transformers EfficientNet config that its b0 ... b7 all have (transformers' defaults)
_TRANSFORMERS_EFFICIENTNET_BASE = {
    "num_channels": 3, "depth_divisor": 8, "kernel_sizes": [3, 3, 5, 3, 5, 5, 3], "in_channels": [32, 16, 24, 40, 80, 112, 192],
    "out_channels": [16, 24, 40, 80, 112, 192, 320], "strides": [1, 2, 2, 2, 1, 2, 1], "num_block_repeats": [1, 2, 2, 3, 3, 4, 1],
    "expand_ratios": [1, 6, 6, 6, 6, 6, 6], "squeeze_expansion_ratio": 0.25, "hidden_act": "swish", "batch_norm_eps": 1e-3,
    "pooling_type": "mean"}


def weights_architecture(pretrained: str | None) -> tuple[str, str | None] | None:
    """What the ``config.json`` of local weights (a timm hub or transformers folder, the folder of a
    weights file, a Hugging Face cache snapshot) says their architecture is, and the ``--model`` that
    builds it where that is plain (timm's: ``timm:`` and its ``architecture``; a transformers ResNet:
    torchvision's ``resnet*`` of its depths; a transformers ViT, DeiT, BEiT, DINOv2, ConvNeXt or Swin (V1 or V2
    each), RegNet, EfficientNet or MobileViT: the ``timm:`` model of its sizes); None when there is no such file or it names none.

    >>> import json, pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text(json.dumps({"architecture": "resnet50", "pretrained_cfg": {}}))
    >>> weights_architecture(str(folder))
    ('timm architecture resnet50', 'timm:resnet50')
    >>> _ = (folder / "config.json").write_text(json.dumps({"architectures": ["ResNetForImageClassification"],
    ...     "model_type": "resnet", "layer_type": "bottleneck", "depths": [3, 4, 6, 3]}))
    >>> weights_architecture(str(folder / "model.safetensors"))
    ('ResNetForImageClassification (model_type resnet)', 'resnet50')
    >>> weights_architecture("torchvision") is None
    True
    """
    import json
    from pathlib import Path

    from finetune.weights.sources import is_named

    if not pretrained or is_named(pretrained):
        return None
    folder = _weights_folder(Path(pretrained).expanduser())
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if folder is not None else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if isinstance(config.get("architecture"), str) and config["architecture"]:  # timm's hub format
        return f"timm architecture {config['architecture']}", TIMM_PREFIX + config["architecture"]
    names = config.get("architectures")
    model_type = config.get("model_type")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)) and not isinstance(model_type, str):
        return None
    said = ", ".join(names) if isinstance(names, list) and names else f"a {model_type} model"
    if isinstance(model_type, str) and isinstance(names, list) and names:
        said += f" (model_type {model_type})"
    depths = config.get("depths")
    key = (config.get("layer_type"), tuple(depths) if isinstance(depths, list) else None)
    return said, _TRANSFORMERS_RESNETS.get(key) if model_type == "resnet" else _transformers_timm_model(config)


def converted_architecture(pretrained: str | None) -> tuple[str, str | None] | None:
    """What a ``.safetensors`` file written by ``finetune convert`` records of the architecture of the weights it
    converted (as :func:`weights_architecture` read their ``config.json``): its metadata's ``architecture`` and
    ``architecture_model``; None for any other file. Only the header is read.

    >>> import pathlib, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "pt", "architecture": "timm architecture resnet50",
    ...                                                      "architecture_model": "timm:resnet50"})
    >>> converted_architecture(str(path))
    ('timm architecture resnet50', 'timm:resnet50')
    >>> save_file({"w": torch.zeros(1)}, str(path)); converted_architecture(str(path)) is None
    True
    """
    from pathlib import Path

    from safetensors import SafetensorError

    from finetune.checkpoint import _header_metadata
    from finetune.weights.sources import is_named

    if not pretrained or is_named(pretrained):
        return None
    try:
        meta = _header_metadata(Path(pretrained).expanduser())
    except (OSError, SafetensorError, ValueError):
        return None  # (a broken file: loading the weights says what is wrong)
    if not meta or not meta.get("architecture"):
        return None
    return meta["architecture"], meta.get("architecture_model") or None


def _transformers_timm_model(config: dict) -> str | None:
    """The ``timm:`` model of a transformers ViT, DeiT, BEiT (or data2vec-vision, BEiT's network), DINOv2, ConvNeXt
    or Swin (V1 or V2 each), RegNet, EfficientNet or MobileViT ``config.json`` (whose fields transformers writes all of), where they are those of one of timm's
    models; None otherwise (a field missing, a size or layout timm has no name for, no timm).

    >>> _transformers_timm_model({"model_type": "convnext", "depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768],
    ...                           "patch_size": 4, "num_stages": 4, "layer_scale_init_value": 1e-6})
    'timm:convnext_tiny'
    >>> _transformers_timm_model({"model_type": "convnext", "depths": [3, 3, 9, 3]}) is None
    True
    """
    def field(name: str) -> Any:  # (lists as tuples, to look up)
        value = config.get(name)
        return tuple(value) if isinstance(value, list) else value

    kind = config.get("model_type")
    try:
        vit = _TRANSFORMERS_VIT_SIZES.get((field("hidden_size"), field("num_hidden_layers"), field("num_attention_heads")))
        convnext = _TRANSFORMERS_CONVNEXTS.get((field("depths"), field("hidden_sizes")))
        convnextv2 = _TRANSFORMERS_CONVNEXTV2S.get((field("depths"), field("hidden_sizes")))
        swin = _TRANSFORMERS_SWINS.get((field("embed_dim"), field("depths"), field("num_heads")))
        efficientnet = _TRANSFORMERS_EFFICIENTNETS.get((field("width_coefficient"), field("depth_coefficient"),
                                                        field("hidden_dim")))
        regnet = _TRANSFORMERS_REGNETS.get((field("layer_type"), field("depths"), field("hidden_sizes"), field("groups_width")))
        mobilevit = _TRANSFORMERS_MOBILEVITS.get((field("hidden_sizes"), field("neck_hidden_sizes"), config.get("expand_ratio", 4.0)))
    except TypeError:  # (a list of lists, a dict: no such model)
        return None
    patch, size = field("patch_size"), field("image_size")
    mlp_4x = isinstance(field("hidden_size"), int) and field("intermediate_size") == 4 * field("hidden_size")
    qkv_bias = field("qkv_bias") is not False  # (a file older than the field has them)
    name = None
    if kind == "vit" and vit and mlp_4x and qkv_bias:
        name = f"vit_{vit}_patch{patch}_{size}"
    elif kind == "deit" and vit and mlp_4x and qkv_bias:  # (transformers' DeiT always has the
        name = f"deit_{vit}_distilled_patch{patch}_{size}"  # distillation token: timm's distilled DeiT, either head)
    elif (kind in ("beit", "data2vec-vision") and vit and mlp_4x and field("use_relative_position_bias") is True
          and field("use_shared_relative_position_bias") is False and field("use_absolute_position_embeddings") is False
          and field("use_mean_pooling") is True and (field("layer_scale_init_value") or 0) > 0):
        name = f"beit_{vit}_patch{patch}_{size}"  # (a table per layer, mean pooling, layer scale: as timm's beit_*)
    elif kind in ("dinov2", "dinov2_with_registers") and vit and patch == 14 and field("mlp_ratio") == 4 \
            and bool(field("use_swiglu_ffn")) == (vit == "giant"):
        registers = field("num_register_tokens") if kind == "dinov2_with_registers" else 0
        name = f"vit_{vit}_patch14_reg{registers}_dinov2" if registers else f"vit_{vit}_patch14_dinov2"
    elif kind == "convnext" and convnext and patch == 4 and field("num_stages") == 4 \
            and (field("layer_scale_init_value") or 0) > 0:
        name = f"convnext_{convnext}"
    elif kind == "convnextv2" and convnextv2 and patch == 4 and field("num_stages") == 4:
        name = f"convnextv2_{convnextv2}"  # (no layer scale: none to check)
    elif kind == "swin" and swin and patch == 4 and field("mlp_ratio") == 4 and field("use_absolute_embeddings") is False:
        name = f"swin_{swin}_patch4_window{field('window_size')}_{size}"
    elif kind == "swinv2" and swin and patch == 4 and field("mlp_ratio") == 4 and field("use_absolute_embeddings") is False \
            and qkv_bias:
        window, trained_windows = field("window_size"), field("pretrained_window_sizes") or (0, 0, 0, 0)
        if trained_windows == (0, 0, 0, 0):
            name = f"swinv2_{swin}_window{window}_{size}"
        elif trained_windows == (12, 12, 12, 6):  # (fine-tuned from a 192 px, window 12 model: its windows set the position bias)
            name = f"swinv2_{swin}_window12to{window}_192to{size}"
    elif kind == "regnet" and regnet and config.get("embedding_size", 32) == 32 and config.get("hidden_act", "relu") == "relu" \
            and config.get("downsample_in_first_stage", True) is True and config.get("num_channels", 3) == 3:
        name = f"regnet{field('layer_type')}_{regnet}"  # (missing: transformers' defaults, timm's regnets' too)
    elif kind == "efficientnet" and efficientnet and all(config.get(k, v) == v for k, v in _TRANSFORMERS_EFFICIENTNET_BASE.items()):
        name = f"tf_efficientnet_{efficientnet}"  # (missing: transformers' defaults)
    elif kind == "mobilevit" and mobilevit and all(config.get(k, v) == v for k, v in _TRANSFORMERS_MOBILEVIT_BASE.items()):
        name = f"mobilevit_{mobilevit}"
    if name is None:
        return None
    try:
        import timm
    except ImportError:
        return None
    return TIMM_PREFIX + name if name in timm.list_models() else None


@functools.lru_cache(maxsize=4)
def _finetune_checkpoint_cfg(path: str, mtime_ns: int) -> Any:
    """The input settings (size, crop, interpolation, mean, std) a finetune checkpoint records; None
    for any other file (read safely, as the weights are, but not their tensors: a large file is read
    once, when its weights load; cached: the run asks several times)."""
    from pathlib import Path

    from finetune.weights.formats import peek_torch_zip, sniff

    try:  # (finetune writes torch zips)
        meta = peek_torch_zip(Path(path)) if sniff(Path(path)) == "torch zip" else None
    except Exception:  # noqa: BLE001 - not readable here: loading the weights says why
        return None
    if not isinstance(meta, dict) or meta.get("format") != "finetune-checkpoint" or not isinstance(meta.get("img_size"), int):
        return None
    return types.SimpleNamespace(input_size=[3, meta["img_size"], meta["img_size"]], crop_pct=meta.get("crop_pct"),
                                 interpolation=meta.get("interpolation"), crop_mode=meta.get("crop_mode"),
                                 mean=meta.get("mean"), std=meta.get("std"), fixed_input_size=None)


@functools.lru_cache(maxsize=4)
def _finetune_weights_cfg(path: str, mtime_ns: int) -> Any:
    """The input settings (size, crop, interpolation, mean, std) a run's ``best.safetensors`` records in
    its metadata (:func:`finetune.checkpoint.input_settings`), or a file ``finetune convert`` wrote from
    weights that carry them; None for any other safetensors file (only the header is read, not the tensors)."""
    from finetune.checkpoint import DEPLOYMENT_KEYS, input_settings

    meta = input_settings(path)
    if meta is None:
        return None
    size = meta.get("img_size")
    return types.SimpleNamespace(input_size=[3, size, size] if size else None, fixed_input_size=None,
                                 **{k: meta.get(k) for k in DEPLOYMENT_KEYS})


def _torchvision_weights_preset(model: str, pretrained: str | None) -> dict[str, Any] | None:
    """The keywords of the eval preset (crop_size, resize_size, interpolation) of the torchvision
    weights ``--pretrained torchvision[:ARCH|:TAG|:ARCH.TAG]`` names; None otherwise."""
    if pretrained is None or not (pretrained == "torchvision" or pretrained.startswith("torchvision:")):
        return None
    from finetune.weights.sources import torchvision_weights

    try:
        return dict(getattr(torchvision_weights(pretrained, model).transforms, "keywords", {}))
    except Exception:  # noqa: BLE001 - not a torchvision model, or unknown weights: reported where they load
        return None


def normalization(model: str, pretrained: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` the model's pretrained weights were trained with, for input normalisation.

    timm weights carry theirs (``timm:vit_base_patch16_224.augreg_in21k``: 0.5 / 0.5; CLIP
    models: OpenAI's); the timm source named by ``pretrained`` wins over the model's default
    tag. torchvision's default weights with ``--pretrained torchvision``: their preset's own
    (ImageNet's, except ``efficientnet_v2_l``: 0.5 / 0.5). Everything else (files, training from
    scratch): ImageNet's.

    >>> normalization("resnet18")
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    >>> normalization("timm:vit_tiny_patch16_224")
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    >>> normalization("timm:resnet50", pretrained="timm:vit_base_patch16_clip_224.openai")[0][0]
    0.48145466
    >>> normalization("efficientnet_v2_l", "torchvision"), normalization("efficientnet_v2_l")[0]
    (((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), (0.485, 0.456, 0.406))
    """
    preset = _torchvision_weights_preset(model, pretrained)
    if preset is not None:
        mean, std = preset.get("mean", IMAGENET_MEAN_STD[0]), preset.get("std", IMAGENET_MEAN_STD[1])
        if len(mean) == 3 and len(std) == 3:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
        return IMAGENET_MEAN_STD
    clip = clip_file_mean_std(pretrained)
    if clip is not None:  # a CLIP file's own (not a timm model's default tag's)
        return clip
    _, cfg = _timm_weights_cfg(model, pretrained)
    if cfg is None or cfg.mean is None or cfg.std is None or len(cfg.mean) != 3:
        return IMAGENET_MEAN_STD
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def pretrained_input_size(model: str, pretrained: str | None = None) -> int | None:
    """The image size the weights were trained at, used as ``--img-size`` when none is given:
    timm's ``input_size`` for a timm source or a timm model (``vit_base_patch16_384``: 384),
    the crop of torchvision's default weights with ``--pretrained torchvision``
    (``efficientnet_b3``: 300); None when unknown (then 224).

    >>> pretrained_input_size("timm:vit_base_patch16_384"), pretrained_input_size("efficientnet_b3", "torchvision")
    (384, 300)
    >>> pretrained_input_size("resnet50", "timm:resnet50.a1_in1k"), pretrained_input_size("efficientnet_b3") is None
    (224, True)
    """
    is_timm, cfg = _timm_weights_cfg(model, pretrained)
    if is_timm:
        size = getattr(cfg, "input_size", None)
        return int(size[-1]) if size and len(size) == 3 and size[-1] == size[-2] else None
    preset = _torchvision_weights_preset(model, pretrained)
    crop = preset.get("crop_size") if preset is not None else None
    crop = crop[0] if isinstance(crop, (list, tuple)) else crop
    return int(crop) if isinstance(crop, int) else None


def eval_transform_of(model: str, pretrained: str | None = None) -> tuple[float, str, str]:
    """``(crop_pct, interpolation, crop_mode)`` of the eval transform the weights were made for:
    eval resizes the shorter side to ``img_size / crop_pct`` with that interpolation (both sides
    with ``crop_mode="squash"``), then crops the centre ``img_size`` square.

    timm's ``pretrained_cfg`` for a timm source or a timm model (``timm:convnext_tiny``: 0.875,
    bicubic; ViTs: 0.9), as timm's ``resolve_data_config`` takes them (its rare "border" mode,
    a resize that keeps the whole image and pads, is taken as "center"; a ``crop_pct`` above 1, a shrink
    below the crop and a padded border, as 1.0); the crop / resize of
    torchvision's default weights with ``--pretrained torchvision`` (``resnet50``: 224 / 232,
    bilinear; ``efficientnet_b3``: 300 / 320, bicubic); else torchvision's classic
    ``(0.875, "bilinear", "center")``.

    >>> eval_transform_of("resnet18"), eval_transform_of("timm:vit_tiny_patch16_224")
    ((0.875, 'bilinear', 'center'), (0.9, 'bicubic', 'center'))
    >>> crop_pct, interpolation, _ = eval_transform_of("efficientnet_b3", "torchvision")
    >>> round(300 / crop_pct), interpolation
    (320, 'bicubic')
    >>> eval_transform_of("timm:coat_lite_medium_384"), eval_transform_of("timm:volo_d4_448")
    ((1.0, 'bicubic', 'squash'), (1.0, 'bicubic', 'center'))
    """
    default = (0.875, "bilinear", "center")
    is_timm, cfg = _timm_weights_cfg(model, pretrained)
    if is_timm:
        if cfg is None:
            return default
        crop_pct = getattr(cfg, "crop_pct", None)
        interpolation = getattr(cfg, "interpolation", None)
        # (above 1, VOLO's *_448 / *_512: timm shrinks the image below the crop and pads it; the whole image unpadded
        # is the nearest of what eval here does)
        return (min(float(crop_pct), 1.0) if isinstance(crop_pct, (int, float)) and crop_pct > 0 else default[0],
                interpolation if interpolation in ("bilinear", "bicubic") else default[1],
                "squash" if getattr(cfg, "crop_mode", None) == "squash" else "center")
    keywords = _torchvision_weights_preset(model, pretrained)
    if keywords is None:
        return default
    crop, resize = keywords.get("crop_size", 224), keywords.get("resize_size", 256)  # ImageClassification's defaults
    crop = crop[0] if isinstance(crop, (list, tuple)) else crop
    resize = resize[0] if isinstance(resize, (list, tuple)) else resize
    mode = getattr(keywords.get("interpolation"), "value", "bilinear")
    if not (isinstance(crop, int) and isinstance(resize, int) and 0 < crop <= resize):
        return default
    return crop / resize, mode if mode in ("bilinear", "bicubic") else default[1], "center"


def check_input_size(model: nn.Module, img_size: int) -> None:
    """Raise :class:`ModelError` if ``model`` cannot take ``img_size`` x ``img_size`` images
    (too small for its downsampling, or a fixed input size), before any training starts.

    One forward of two images in train mode (auxiliary heads run) without gradients; the
    model's buffers (BatchNorm statistics) and the RNG state are left as they were.

    >>> check_input_size(create_model("resnet18", num_classes=2), 32)
    >>> check_input_size(create_model("inception_v3", num_classes=2), 64)
    Traceback (most recent call last):
    ...
    finetune.errors.ModelError: inception_v3 cannot take 64x64 images (...): use img_size=299 or more (--img-size)
    """
    reason = _input_size_problem(model, img_size)
    if reason is None:
        return
    name = getattr(model, "finetune_arch", type(model).__name__)
    default = _default_size(name)  # (timm's halonet_h1 takes multiples of 256 only: 256 before 299, 384, 512)
    sizes = sorted({*_LARGER_SIZES, *([default] if default is not None else [])})
    larger = next((s for s in sizes if s > img_size and _input_size_problem(model, s) is None), None)
    hint = f"use img_size={larger} or more (--img-size)" if larger is not None else "use a larger img_size (--img-size)"
    native = _built_for_size(name) or (default if larger == default else None)
    if native is not None and native != img_size and larger in (None, native):  # fixed size: 'or more' fails too
        hint = f"use img_size={native} (--img-size), the size it was designed for"
    raise ModelError(f"{name} cannot take {img_size}x{img_size} images ({reason}): {hint}")


_LARGER_SIZES = (32, 64, 96, 128, 160, 224, 299, 384, 512)  # tried in order for the hint of the error


def _built_for_size(name: str) -> int | None:
    """The input size of a model whose layers depend on the size it is built for (timm's
    ``fixed_input_size`` models: ViT, CrossViT, Swin; torchvision's ``vit_*`` and ``maxvit_t``),
    else None: another size there means another model, so the hint names this one.

    >>> _built_for_size("timm:crossvit_tiny_240"), _built_for_size("vit_b_16"), _built_for_size("resnet18")
    (240, 224, None)
    """
    if name.startswith(TIMM_PREFIX):
        try:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(name[len(TIMM_PREFIX):])
        except Exception:  # noqa: BLE001 - no timm, or an unknown name
            return None
        size = getattr(cfg, "input_size", None)
        fixed = getattr(cfg, "fixed_input_size", False)
        return int(size[-1]) if fixed and size and len(size) == 3 and size[-1] == size[-2] else None
    return 224 if name.startswith(("vit_", "maxvit")) else None


def _default_size(name: str) -> int | None:
    """The square input size of a timm model's default pretrained config (fixed or not), else None.

    >>> _default_size("timm:halonet_h1"), _default_size("timm:resnet18"), _default_size("resnet18")
    (256, 224, None)
    """
    if not name.startswith(TIMM_PREFIX):
        return None
    try:
        from timm.models import get_pretrained_cfg

        size = getattr(get_pretrained_cfg(name[len(TIMM_PREFIX):]), "input_size", None)
    except Exception:  # noqa: BLE001 - no timm, or an unknown name
        return None
    return int(size[-1]) if size and len(size) == 3 and size[-1] == size[-2] else None


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Give every submodule its own train/eval flag back on exit: a model in ``train()`` with
    frozen BatchNorm or dropout layers in eval (:func:`finetune.freeze.set_bn_policy`) stays
    exactly so, which ``model.train(was_training)`` would undo.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout()); _ = m.train(); _ = m[1].eval()
    >>> with modes_kept(m):
    ...     _ = m.eval()
    >>> m.training, m[1].training
    (True, False)
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _input_size_problem(model: nn.Module, img_size: int) -> str | None:
    """None if a train-mode forward of two ``img_size`` images works, else the error's first line."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    saved = [(b, b.detach().clone()) for b in model.buffers()]  # restored in place: no load_state_dict hooks
    try:
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), modes_kept(model):  # (dropout draws leave no trace)
            model.train()
            model(torch.zeros(2, 3, img_size, img_size, device=device))
    except torch.cuda.OutOfMemoryError:
        raise ModelError(f"out of GPU memory for one forward of two {img_size}x{img_size} images: "
                         "use a smaller model or img_size (--img-size)") from None
    except (RuntimeError, AssertionError, ValueError, IndexError) as e:
        if isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e)):
            raise ModelError(f"out of memory for one forward of two {img_size}x{img_size} images on {device}: "
                             "use a smaller model or img_size (--img-size)") from None
        return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return None


def head_name(model: nn.Module) -> str:
    """Dotted name of the (main) classifier head module.

    timm models name it with ``get_classifier()``; otherwise it is the last
    Linear (or 1x1 Conv2d, as in SqueezeNet) registered in the model. A model
    with several heads (timm's distilled DeiT: ``head`` and ``head_dist``)
    gives the first; :func:`head_names` lists them all.

    >>> head_name(create_model("vit_b_16", num_classes=2))
    'heads.head'
    """
    return head_names(model)[0]


def head_names(model: nn.Module) -> list[str]:
    """Dotted names of the classifier heads whose outputs the model returns (usually one).

    timm's distilled models return the mean of two heads (``head``,
    ``head_dist``), and their ``get_classifier()`` gives both. Auxiliary heads
    that only feed a training loss (GoogLeNet's ``aux1`` / ``aux2``,
    Inception v3's ``AuxLogits``) are not among them.

    >>> head_names(create_model("timm:deit_tiny_distilled_patch16_224", num_classes=2))
    ['head', 'head_dist']

    timm's CrossViT has one head per branch (``head.0``, ``head.1``); VOLO adds a token-level
    ``aux_head`` to its ``head``'s logits: both are heads.
    """
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        heads = get_classifier()
        heads = list(heads) if isinstance(heads, (tuple, list)) else [heads]
        heads = [h for head in heads for h in (head if isinstance(head, nn.ModuleList) else [head])]  # CrossViT
        aux = getattr(model, "aux_head", None)  # VOLO: adds its token-level aux head to the logits
        if isinstance(aux, nn.Linear) and aux.out_features == getattr(model, "num_classes", None):
            heads.append(aux)
        names = {id(module): name for name, module in model.named_modules()}
        if heads and all(id(h) in names for h in heads):
            return [names[id(h)] for h in heads]
    def is_classifier(module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))

    last = None
    for name, module in model.named_modules():
        if is_classifier(module):
            last = name
    if last is None:
        raise ModelError(f"cannot find the classifier head of {type(model).__name__}")
    # a model of one's own that registers its head before the body (self.head = ... first in __init__): a
    # top-level child called head / fc / classifier wins over the last Linear registered when it takes what
    # that one gives (and does not feed it: an MLP's first layer called fc)
    modules = dict(model.named_modules())
    named = [f"{child}.{n}" if n else child for child, module in model.named_children() if child in HEAD_CHILD_NAMES
             for n, m in module.named_modules() if is_classifier(m)]

    def width(module: nn.Module, side: str) -> int | None:
        return getattr(module, f"{side}_features", getattr(module, f"{side}_channels", None))

    if named and named[-1] != last and not last.startswith(named[-1].split(".")[0] + "."):
        head, body = modules[named[-1]], modules[last]
        if width(head, "in") == width(body, "out") and width(head, "out") != width(body, "in"):
            return [named[-1]]
    return [last]


HEAD_CHILD_NAMES = ("head", "heads", "fc", "classifier", "last_linear")  # what torchvision/timm/Cadene call a head


AUX_HEAD_TYPES = ("InceptionAux",)  # torchvision GoogLeNet / Inception v3, timm Inception v3


def aux_head_names(model: nn.Module) -> list[str]:
    """Dotted names of auxiliary heads: branches that only feed an extra training loss.

    GoogLeNet's ``aux1`` / ``aux2`` and Inception v3's ``AuxLogits`` run in
    train mode only, and :func:`logits_of` ignores their outputs, so they get no
    gradient unless the loss uses them.

    >>> import torchvision
    >>> aux_head_names(torchvision.models.googlenet(num_classes=2, init_weights=False))
    ['aux1', 'aux2']
    """
    return [n for n, m in model.named_modules() if n and type(m).__name__ in AUX_HEAD_TYPES]


def logits_of(output: object) -> torch.Tensor:
    """The main logits of a forward pass (Inception/GoogLeNet return named tuples with aux logits).

    >>> import torch
    >>> from torchvision.models import GoogLeNetOutputs
    >>> from finetune.models import logits_of
    >>> main, aux = torch.ones(1, 3), torch.zeros(1, 3)
    >>> logits_of(main) is main, logits_of(GoogLeNetOutputs(main, aux, aux)) is main
    (True, True)
    >>> logits_of({"logits": main})
    Traceback (most recent call last):
    finetune.errors.ModelError: the model returned dict, not logits
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(f"the model returned {type(output).__name__}, not logits")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts.

    >>> count_parameters(nn.Linear(2, 3))
    (9, 9)
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


# --------------------------------------------------------------------------- the model table
@dataclass(frozen=True)
class ModelInfo:
    """One row of :func:`model_table`: an architecture and its default ImageNet weights.

    ``params`` is the ImageNet model's parameter count, ``top1``/``top5`` its ImageNet-1K
    accuracy (%) as published with the weights (None where the library does not ship them,
    as timm does not), ``weights`` the file name and ``cached`` whether it is already in the
    local cache (``--pretrained`` then needs no download).

    >>> ModelInfo("resnet18", 11689512, 69.758, 89.078, "resnet18-f37072fd.pth", False).top1
    69.758
    """

    name: str
    params: int | None
    top1: float | None
    top5: float | None
    weights: str | None
    cached: bool


def whole_file(path: Path) -> bool:
    """Whether ``path`` is a file that can hold whole weights: not empty, and, when it is a zip
    archive (``torch.save``'s format), one with its end record (a copy or download cut short has
    none). Reads the file's first bytes and its end only.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> torch.save({"w": torch.zeros(2)}, folder / "ok.pth")
    >>> _ = (folder / "empty.pth").write_bytes(b"")
    >>> _ = (folder / "cut.pth").write_bytes((folder / "ok.pth").read_bytes()[:100])
    >>> [whole_file(folder / n) for n in ("ok.pth", "empty.pth", "cut.pth", "missing.pth")]
    [True, False, False, False]
    """
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        return not zipped or zipfile.is_zipfile(path)
    except OSError:
        return False


def model_table(pattern: str = "*", *, include_timm: bool = False) -> list[ModelInfo]:
    """Architectures matching the glob ``pattern``, with the ImageNet parameters, top-1/top-5
    accuracy and cache status of their default pretrained weights (``finetune models``).

    torchvision's figures come from its weights' metadata; a pattern with a dot lists each of
    torchvision's weights as ``NAME.TAG`` (what ``--pretrained torchvision:NAME.TAG`` takes), as
    timm's pretrained tags (``timm:NAME.TAG``) are listed, with their cache status only (timm
    ships no accuracies).

    >>> from finetune import model_table
    >>> row = model_table("resnet50")[0]
    >>> row.name, row.params, row.top1, row.top5, row.weights
    ('resnet50', 25557032, 80.858, 95.434, 'resnet50-11ad3fa6.pth')
    >>> [r.name for r in model_table("convnext_*")]
    ['convnext_base', 'convnext_large', 'convnext_small', 'convnext_tiny']
    >>> [(r.name, r.top1) for r in model_table("resnet50.*")]
    [('resnet50.IMAGENET1K_V1', 76.13), ('resnet50.IMAGENET1K_V2', 80.858)]
    """
    from torchvision.models import get_model_weights

    from finetune.weights.sources import torch_hub_checkpoints

    rows: list[ModelInfo] = []
    bare = pattern.removeprefix(TIMM_PREFIX)
    hub = torch_hub_checkpoints()
    if not pattern.startswith(TIMM_PREFIX):
        for name in torchvision_models():
            try:
                enum = get_model_weights(name)
            except (ValueError, KeyError, AttributeError):  # an architecture without weights
                if fnmatch.fnmatchcase(name, pattern):
                    rows.append(ModelInfo(name, None, None, None, None, False))
                continue
            tagged = [(f"{name}.{w.name}", w) for w in enum] if "." in pattern else [(name, enum.DEFAULT)]
            for row_name, weights in tagged:
                if not fnmatch.fnmatchcase(row_name, pattern):
                    continue
                acc = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
                file = weights.url.rsplit("/", 1)[-1]
                rows.append(ModelInfo(row_name, weights.meta.get("num_params"), acc.get("acc@1"), acc.get("acc@5"),
                                      file, whole_file(hub / file)))  # (an empty or cut-short file: not cached)
    if include_timm or pattern.startswith(TIMM_PREFIX):
        try:
            import timm
        except ImportError:
            raise ModelError("listing timm models needs timm: pip install timm") from None
        from finetune.weights.sources import timm_cached_file

        for name in timm.list_pretrained(bare):
            cached = timm_cached_file(name)
            rows.append(ModelInfo(TIMM_PREFIX + name, None, None, None,
                                  cached.name if cached is not None else None, cached is not None))
    return rows


def format_model_table(rows: list[ModelInfo]) -> str:
    """``model_table``'s rows as an aligned text table (what ``finetune models`` prints).

    >>> import os, tempfile
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"TORCH_HOME": tempfile.mkdtemp()}):  # an empty cache
    ...     print(format_model_table(model_table("resnet1*")))  # doctest: +NORMALIZE_WHITESPACE
    model      params  top1 %  top5 %  cached  weights
    resnet101  44.5M   81.89   95.78   -       resnet101-cd907fc2.pth
    resnet152  60.2M   82.28   96.00   -       resnet152-f82ba261.pth
    resnet18   11.7M   69.76   89.08   -       resnet18-f37072fd.pth
    """
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    table = [("model", "params", "top1 %", "top5 %", "cached", "weights")]
    for r in rows:
        table.append((r.name, "-" if r.params is None else f"{r.params / 1e6:.1f}M", num(r.top1, ".2f"),
                      num(r.top5, ".2f"), "yes" if r.cached else "-", r.weights or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


# --------------------------------------------------------------------------- layer summary
@dataclass
class LayerRow:
    """One module of :func:`layer_summary`: its name, type, output shape and parameter counts.

    >>> LayerRow("fc", "Linear", "Linear", 1, (1, 10), 5130, 5130).output_shape
    (1, 10)
    """

    name: str
    type: str
    module: str  # repr-like description: Linear(in_features=512, out_features=10)
    depth: int
    output_shape: tuple[int, ...] | str | None
    params: int
    trainable: int


@dataclass
class LayerSummary:
    """What :func:`layer_summary` found: one row per module down to ``depth``, the input and
    output shapes, and where the forward failed (``error``; None when it ran).

    ``str(summary)`` is the table ``finetune summary`` prints.
    """

    model: str
    input_shape: tuple[int, ...]
    rows: list[LayerRow]
    output_shape: tuple[int, ...] | str | None
    params: int
    error: str | None = None
    failed_at: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        table = [("layer", "type", "output shape", "params", "trainable")]
        opened: set[str] = set()  # the rows above that are ancestors of the next one
        for r in self.rows:
            shape = "-" if r.output_shape is None else (
                r.output_shape if isinstance(r.output_shape, str) else "x".join(map(str, r.output_shape)))
            parent = r.name.rpartition(".")[0]
            shown = r.name.rpartition(".")[2] if parent in opened else r.name  # a ModuleList's / ModuleDict's children: full name
            opened = {*(n for n in opened if parent == n or parent.startswith(n + ".")), r.name}
            table.append(("  " * (r.depth - 1) + shown, r.type, shape, f"{r.params:,}", f"{r.trainable:,}"))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = ["  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                 .rstrip() for row in table]
        head = f"{self.model}: input {'x'.join(map(str, self.input_shape))}"
        if self.ok:
            out = self.output_shape if isinstance(self.output_shape, str) else "x".join(map(str, self.output_shape or ()))
            head += f" -> output {out}"
        lines.insert(0, f"{head}, {self.params:,} parameters")
        if self.error is not None:
            lines.append(f"FAILED at {self.failed_at}: {self.error}")
        return "\n".join(lines)


def _shape_of(value: object) -> tuple[int, ...] | str | None:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value) and all(
            v is None or isinstance(v, torch.Tensor) for v in value):  # MultiheadAttention(need_weights=False): (out, None)
        return " ".join("None" if v is None else "x".join(map(str, v.shape)) for v in value)
    if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return " ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in value.items())  # {"logits": ..., "aux": ...}
    logits = getattr(value, "logits", None)
    if isinstance(logits, torch.Tensor):
        return tuple(logits.shape)
    return None


def _describe(module: nn.Module) -> str:
    extra = module.extra_repr().replace("\n", " ")
    return f"{type(module).__name__}({extra})"


def layer_summary(model: nn.Module, img_size: int = 224, *, depth: int = 2, channels: int = 3,
                  batch_size: int = 1) -> LayerSummary:
    """Run one forward of a ``batch_size x channels x img_size x img_size`` batch (eval mode, no
    gradients) and record every module's output shape and parameters, down to ``depth``
    levels of nesting (``finetune summary``). A model with auxiliary heads (GoogLeNet, Inception v3)
    also runs one train-mode forward of two images, as training runs those heads (its BatchNorm
    statistics and the RNG state are left as they were): a size they cannot take fails here too.

    A forward that fails does not raise: the summary keeps the layers that ran and names
    the innermost module that failed, with the shape it was given and what it expects —
    the classic ``nn.Linear(32 * 3 * 3, ...)`` after a pooled input is found at once.

    >>> from torch import nn
    >>> from finetune import create_model, layer_summary
    >>> s = layer_summary(create_model("resnet18", num_classes=4), 64, depth=1)
    >>> s.ok, s.output_shape, [(r.name, r.output_shape) for r in s.rows][-3:]
    (True, (1, 4), [('layer4', (1, 512, 2, 2)), ('avgpool', (1, 512, 1, 1)), ('fc', (1, 4))])
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(32 * 3 * 3, 10))
    >>> bad = layer_summary(net, 32)
    >>> bad.ok, bad.failed_at
    (False, '3')
    >>> bad.error
    'Linear(in_features=288, out_features=10, bias=True) got input of shape 1x72: mat1 and mat2 shapes cannot be multiplied (1x72 and 288x10)'
    """
    check_model(model)
    if img_size < 1 or depth < 1 or batch_size < 1 or channels < 1:
        raise ModelError("layer_summary needs img_size, depth, channels and batch_size of at least 1")
    name_of = {id(m): n for n, m in model.named_modules() if n}
    rows: dict[int, LayerRow] = {}  # by the order the calls began: a module called twice (a shared pool) has two rows
    stack: list[tuple[str, nn.Module, tuple[int, ...] | str | None, int]] = []
    started: list[str] = []
    finished: list[str] = []  # modules whose forward returned, in that order
    hooks = []

    def before(module: nn.Module, args: tuple[object, ...]) -> None:
        name = name_of.get(id(module))
        if name is not None:
            stack.append((name, module, _shape_of(args[0]) if args else None, len(started)))
            started.append(name)

    def after(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        name = name_of.get(id(module))
        if name is None:
            return
        _, _, _, start = stack.pop()
        finished.append(name)
        level = name.count(".") + 1
        if level <= depth and not aux_pass:
            params = list(module.parameters())
            rows[start] = LayerRow(name, type(module).__name__, _describe(module), level, _shape_of(output),
                                   sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))

    for module in model.modules():
        if id(module) in name_of:
            hooks.append(module.register_forward_pre_hook(before))
            hooks.append(module.register_forward_hook(after))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    shape = (batch_size, channels, img_size, img_size)
    arch = getattr(model, "finetune_arch", type(model).__name__)
    error = failed_at = None
    output: tuple[int, ...] | str | None = None
    aux_pass = False
    saved = [(b, b.detach().clone()) for b in model.buffers()]  # (the train-mode pass moves BatchNorm statistics)
    try:
        with torch.no_grad(), modes_kept(model):
            model.eval()
            output = _shape_of(model(torch.zeros(shape, device=device, dtype=dtype)))
            if aux_head_names(model):  # GoogLeNet / Inception v3: the aux heads run in training only, and must fit too
                aux_pass = True
                model.train()
                cuda = [device.index if device.index is not None else torch.cuda.current_device()
                        ] if device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda):  # (dropout draws leave no trace)
                    model(torch.zeros((max(batch_size, 2), *shape[1:]), device=device, dtype=dtype))
    except Exception as e:  # noqa: BLE001 - any failure of the forward is what the summary reports
        message = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        if aux_pass:
            message += " (in train mode, where the auxiliary heads run)"
        if stack:
            failed_at, module, given, _ = stack[-1]
            given_text = given if isinstance(given, str) or given is None else "x".join(map(str, given))
            error = f"{_describe(module)} got input of shape {given_text}: {message}"
        else:  # in the model's own forward code (x.view(-1, 32 * 3 * 3), torch.cat, ...), between its modules
            failed_at, error = "(forward)", message + (f" (in {type(model).__name__}.forward, after {finished[-1]})" if finished else "")
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return LayerSummary(arch, shape, [rows[k] for k in sorted(rows)], output,
                        sum(p.numel() for p in model.parameters()), error, failed_at)
