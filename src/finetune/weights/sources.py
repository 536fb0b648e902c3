"""Named pretrained sources: ``torchvision`` and ``timm:NAME``, read from the local caches.

``torchvision`` is the architecture's default ImageNet weights in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``); ``timm:NAME`` is timm's pretrained file in the
Hugging Face hub cache (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``) or the torch hub cache.
A missing file is downloaded unless ``FINETUNE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``; offline,
the error names the file, its URL and the folder to put it in.

>>> is_named("torchvision"), is_named("timm:resnet18"), is_named("weights.pt")
(True, True, False)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from finetune.errors import WeightsError


def is_named(source: object) -> bool:
    """True for ``torchvision``, ``torchvision:ARCH`` and ``timm:NAME`` (not an existing path).

    >>> from finetune.weights.sources import is_named
    >>> is_named("torchvision:resnet50"), is_named("timm:vit_small_patch16_224"), is_named("runs/a/best.pt")
    (True, True, False)
    """
    if not isinstance(source, str) or Path(source).exists():
        return False
    return source == "torchvision" or source.startswith(("torchvision:", "timm:"))


def offline() -> bool:
    """True when downloads are off (``FINETUNE_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/true).

    >>> import os
    >>> from unittest import mock
    >>> from finetune.weights.sources import offline
    >>> with mock.patch.dict(os.environ, {"FINETUNE_OFFLINE": "0", "HF_HUB_OFFLINE": "true"}):
    ...     offline()
    True
    >>> with mock.patch.dict(os.environ, {"FINETUNE_OFFLINE": "0", "HF_HUB_OFFLINE": "0"}):
    ...     offline()
    False
    """
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("FINETUNE_OFFLINE", "HF_HUB_OFFLINE"))


def resolve(source: str, arch: str | None) -> Path:
    """The local file of a named source, downloading it when allowed.

    >>> import os, tempfile
    >>> from unittest import mock
    >>> from finetune.weights.sources import resolve
    >>> with mock.patch.dict(os.environ, {"TORCH_HOME": tempfile.mkdtemp(), "FINETUNE_OFFLINE": "1"}):
    ...     resolve("torchvision", arch="resnet18")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    finetune.errors.WeightsError: pretrained weights 'resnet18-f37072fd.pth' are not cached and downloads are off (...): download https://download.pytorch.org/models/resnet18-f37072fd.pth and put it in .../hub/checkpoints/
    """
    if source == "torchvision" or source.startswith("torchvision:"):
        return torchvision_file(source, arch)
    return timm_file(source.partition(":")[2])


def torch_hub_checkpoints() -> Path:
    """``torch.hub.get_dir()/checkpoints`` (respects ``TORCH_HOME``).

    >>> import os
    >>> from unittest import mock
    >>> from finetune.weights.sources import torch_hub_checkpoints
    >>> with mock.patch.dict(os.environ, {"TORCH_HOME": "/data/torch"}):
    ...     torch_hub_checkpoints()
    PosixPath('/data/torch/hub/checkpoints')
    """
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(source: str, arch: str | None = None) -> Any:
    """The torchvision weights entry (a ``WeightsEnum`` member) that ``source`` names.

    ``torchvision`` is ``arch``'s default weights; after ``torchvision:`` come an architecture
    (``torchvision:resnet50``: its default), a weights tag of ``arch`` (``torchvision:IMAGENET1K_V1``),
    both (``torchvision:resnet50.IMAGENET1K_V1``) or torchvision's own spelling
    (``torchvision:ResNet50_Weights.IMAGENET1K_V1``, as ``resnet50(weights=...)`` takes it).

    >>> torchvision_weights("torchvision", "resnet50")
    ResNet50_Weights.IMAGENET1K_V2
    >>> torchvision_weights("torchvision:IMAGENET1K_V1", "resnet50"), torchvision_weights("torchvision:resnet18.DEFAULT")
    (ResNet50_Weights.IMAGENET1K_V1, ResNet18_Weights.IMAGENET1K_V1)
    >>> torchvision_weights("torchvision:ResNet50_Weights.IMAGENET1K_V1")
    ResNet50_Weights.IMAGENET1K_V1
    >>> torchvision_weights("torchvision:IMAGENET1K_V3", "resnet50")
    Traceback (most recent call last):
    finetune.errors.WeightsError: torchvision has no weights 'IMAGENET1K_V3' for resnet50: it has IMAGENET1K_V1, IMAGENET1K_V2 (the default)
    """
    from torchvision.models import get_weight

    spec = source.partition(":")[2]
    left, dot, tag = spec.rpartition(".")
    if dot and left.endswith("_Weights"):  # torchvision's own ResNet50_Weights.IMAGENET1K_V1
        try:
            return get_weight(spec)
        except (KeyError, ValueError, AttributeError):
            raise WeightsError(f"torchvision has no weights '{spec}': write them as torchvision does "
                               "(ResNet50_Weights.IMAGENET1K_V1) or as ARCH.TAG (resnet50.IMAGENET1K_V1)") from None
    if dot:
        name = left
    elif spec and not spec.isupper():  # torchvision:ARCH (torchvision's tags are upper case)
        name, tag = spec, "DEFAULT"
    else:  # torchvision or torchvision:TAG (of arch)
        name, tag = arch, spec or "DEFAULT"
    if not name:
        raise WeightsError("'torchvision' weights need the architecture: pass arch='resnet18' "
                           "(or use a model built by finetune.create_model)")
    enum = _weights_enum(name)
    if enum is None:
        raise WeightsError(f"torchvision has no pretrained weights for '{name}'")
    if tag not in enum.__members__:
        tags = [t for t in enum.__members__ if t != "DEFAULT"]
        listed = ", ".join(t + (" (the default)" if enum[t] == enum.DEFAULT else "") for t in tags)
        raise WeightsError(f"torchvision has no weights '{tag}' for {name}: it has {listed}")
    return enum[tag]


def _weights_enum(arch: str) -> Any:
    """torchvision's weights enum of ``arch`` (``ResNet50_Weights``), or None."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(arch)
    except (ValueError, KeyError, AttributeError):
        return None


def torchvision_file(source: str, arch: str | None = None) -> Path:
    """The cached file of the torchvision weights ``source`` names (see :func:`torchvision_weights`),
    downloaded when allowed; offline, the error also names the weights of ``arch`` that are cached.

    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"FINETUNE_OFFLINE": "1"}):
    ...     try:
    ...         torchvision_file("torchvision", "not_a_model")
    ...     except WeightsError as e:
    ...         print(str(e)[:40])
    torchvision has no pretrained weights fo
    """
    weights = torchvision_weights(source, arch)
    url = weights.url
    folder = torch_hub_checkpoints()
    path = folder / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    try:
        _download(url, path)
    except WeightsError as e:
        others = [w for w in type(weights) if w != weights and (folder / w.url.rsplit("/", 1)[-1]).is_file()]
        if not others:
            raise
        name = f"{type(weights).__name__}.{others[0].name}"
        raise WeightsError(f"{e}; or use the cached {others[0].url.rsplit('/', 1)[-1]}: "
                           f"source='torchvision:{name}' (--pretrained torchvision:{name})") from None
    return path


DOWNLOAD_TIMEOUT_S = 30.0  # a silent connection (a firewall that drops packets, a stuck proxy) fails after this


def _download(url: str, path: Path) -> None:
    if offline():
        raise _missing(path, url, "downloads are off (FINETUNE_OFFLINE/HF_HUB_OFFLINE)")
    import socket

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch.hub's urlopen has no timeout: it would wait for ever
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as e:  # noqa: BLE001 - any network failure means: offline
        raise _missing(path, url, f"download failed: {type(e).__name__}: {e}") from None
    finally:
        socket.setdefaulttimeout(previous)


def _missing(path: Path, url: str, why: str) -> WeightsError:
    return WeightsError(f"pretrained weights '{path.name}' are not cached{_interrupted(path)} and {why}: "
                        f"download {url} and put it in {path.parent}/")


def _interrupted(path: Path) -> str:
    """``' (an interrupted download left …)'`` when one left its partial file beside where ``path``
    goes: torch.hub's ``NAME.HEX.partial`` (a killed download; it starts again from scratch) or
    huggingface_hub's ``blobs/ETAG.incomplete`` (resumed by the next download); else ``''``.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "resnet18-f37072fd.pth.0123abcd.partial").write_bytes(b"0" * 2**20)
    >>> _interrupted(folder / "resnet18-f37072fd.pth")  # doctest: +ELLIPSIS
    ' (an interrupted download left .../resnet18-f37072fd.pth.0123abcd.partial, 1.0 MB: delete it and download again)'
    """
    import glob

    try:
        left = [(p, "delete it and download again") for p in path.parent.glob(glob.escape(path.name) + ".*.partial")]
        if path.parent.parent.name == "snapshots":  # $HF_HUB_CACHE/models--ORG--NAME/snapshots/REVISION/FILE
            left += [(p, "the next download resumes it, or delete it")
                     for p in (path.parent.parent.parent / "blobs").glob("*.incomplete")]
        sized = [(p.stat().st_size, str(p), how) for p, how in left if p.is_file()]
    except OSError:
        return ""
    if not sized:
        return ""
    size, name, how = max(sized)
    return f" (an interrupted download left {name}, {size / 2**20:.1f} MB: {how})"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, its old name ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub``
    or ``~/.cache/huggingface/hub``), as huggingface_hub resolves it.

    >>> import os
    >>> from unittest import mock
    >>> from finetune.weights.sources import hf_hub_cache
    >>> with mock.patch.dict(os.environ, {"HF_HUB_CACHE": "", "HF_HOME": "/data/hf"}):
    ...     hf_hub_cache()
    PosixPath('/data/hf/hub')
    >>> with mock.patch.dict(os.environ, {"HF_HUB_CACHE": "", "HUGGINGFACE_HUB_CACHE": "/data/old", "HF_HOME": "/data/hf"}):
    ...     hf_hub_cache()
    PosixPath('/data/old')
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # (huggingface_hub still reads the old name)
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def timm_file(name: str) -> Path:
    """The cached pretrained file of timm model ``name`` (``resnet18`` or ``resnet18.a1_in1k``).

    >>> import os, pathlib, tempfile
    >>> from unittest import mock
    >>> from finetune.weights.sources import timm_file
    >>> hub = pathlib.Path(tempfile.mkdtemp())
    >>> snapshot = hub / "models--timm--resnet18.a1_in1k" / "snapshots" / "0123abc"
    >>> snapshot.mkdir(parents=True); (snapshot / "model.safetensors").touch()
    >>> with mock.patch.dict(os.environ, {"HF_HUB_CACHE": str(hub), "FINETUNE_OFFLINE": "1"}):
    ...     timm_file("resnet18.a1_in1k") == snapshot / "model.safetensors"
    True
    """
    if not name:
        raise WeightsError("timm source needs a model name: timm:NAME (e.g. timm:resnet18)")
    repo, url = _timm_locations(name)
    found = timm_cached_file(name)
    if found is not None:
        return found
    legacy = torch_hub_checkpoints() / url.rsplit("/", 1)[-1] if url else None
    folder = hf_hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots" / "main" if repo else None
    if offline() or not repo:
        why = "downloads are off (FINETUNE_OFFLINE/HF_HUB_OFFLINE)"
        if folder is not None:  # the Hugging Face file into the hub cache layout (the legacy file also works)
            error = _missing(folder / "model.safetensors", f"https://huggingface.co/{repo}/resolve/main/model.safetensors", why)
            if url.endswith((".pth", ".pt", ".bin", ".safetensors")) and legacy is not None:  # (not JAX .npz)
                error = WeightsError(f"{error} (or download {url} and put it in {legacy.parent}/)")
            raise error
        if legacy is None:
            raise WeightsError(f"timm has no pretrained weights for '{name}'")
        raise _missing(legacy, url, why)
    host = _unresolvable_hub_host()
    if host is not None:  # no network: say so at once (huggingface_hub would retry for ~30 s)
        raise _missing(folder / "model.safetensors", f"https://huggingface.co/{repo}/resolve/main/model.safetensors",
                       f"no network (cannot resolve {host})")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # timm's dependency, not finetune's: a torchvision model given timm's weights without timm
        raise _missing(folder / "model.safetensors", f"https://huggingface.co/{repo}/resolve/main/model.safetensors",
                       "downloading it needs huggingface_hub (installed with timm: pip install timm)") from None
    try:
        return Path(hf_hub_download(repo, "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - network, auth or missing file
        raise _missing(folder / "model.safetensors", f"https://huggingface.co/{repo}/resolve/main/model.safetensors",
                       f"download failed: {type(e).__name__}: {str(e)[:120]}") from None


def _unresolvable_hub_host() -> str | None:
    """The Hugging Face hub's host name if it cannot be resolved (no network), else None.

    Behind a proxy (``HTTPS_PROXY``) names may only resolve there: no check then.

    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_ENDPOINT": "https://no-such-host.invalid"}):
    ...     _unresolvable_hub_host()
    'no-such-host.invalid'
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return host
    return None


def timm_cached_file(name: str) -> Path | None:
    """The locally cached pretrained file of timm model ``name`` (Hugging Face hub cache first,
    then timm's legacy file in the torch hub cache), or None; never downloads.

    >>> import os, tempfile
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_HUB_CACHE": tempfile.mkdtemp(), "TORCH_HOME": tempfile.mkdtemp()}):
    ...     print(timm_cached_file("resnet18.a1_in1k"))
    None
    """
    repo, url = _timm_locations(name)
    if repo:
        found = _hf_cached(repo, ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
        if found is not None:
            return found
    legacy = torch_hub_checkpoints() / url.rsplit("/", 1)[-1] if url else None
    return legacy if legacy is not None and legacy.is_file() else None


def _timm_locations(name: str) -> tuple[str, str]:
    """(Hugging Face repo id, legacy URL) of a timm model name; timm imported lazily."""
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        return f"timm/{name}", ""
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise WeightsError(f"timm has no pretrained weights for '{name}' (see timm.list_pretrained())")
    repo = cfg.hf_hub_id or ""
    if repo.endswith("/"):
        repo += name
    return repo, cfg.url or ""


def _hf_cached(repo: str, files: tuple[str, ...]) -> Path | None:
    """The first of ``files`` in the snapshot of ``repo`` that ``refs/main`` names; without one
    (a cache copied without ``refs/``, or main's snapshot without the file), in the most recently
    downloaded snapshot that has one (:func:`snapshot_note` says which was taken)."""
    found = _hf_snapshot_files(hf_hub_cache() / f"models--{repo.replace('/', '--')}", files)
    return found[0] if found else None


def _hf_snapshot_files(root: Path, files: tuple[str, ...]) -> list[Path]:
    """Per snapshot of a hub cache repository folder, its first of ``files``: refs/main's first,
    then the newest first (a snapshot's files are links to blobs/ written as they downloaded)."""
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return []
    ref = root / "refs" / "main"
    main = ref.read_text(errors="replace").strip() if ref.is_file() else ""
    found = [f for snap in snapshots.iterdir() if snap.is_dir()
             if (f := next((snap / n for n in files if (snap / n).is_file()), None)) is not None]
    return sorted(found, key=lambda f: (f.parent.name != main, -f.stat().st_mtime, f.parent.name))


def snapshot_note(path: Path) -> str | None:
    """What to say about a file of a Hugging Face hub cache repository whose ``refs/main`` names
    no snapshot with it, when other snapshots have one too: which snapshot was taken, and why.

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp()) / "models--timm--resnet18.a1_in1k"
    >>> for snap in ("0a1b", "f9e8"):
    ...     (root / "snapshots" / snap).mkdir(parents=True); (root / "snapshots" / snap / "model.safetensors").touch()
    >>> print(snapshot_note(root / "snapshots" / "f9e8" / "model.safetensors"))  # doctest: +ELLIPSIS
    2 snapshots of timm/resnet18.a1_in1k have model.safetensors and refs/main names neither: took the newest download, f9e8 (...); give another as --pretrained .../snapshots/REVISION/model.safetensors
    """
    snap = path.parent
    root = snap.parent.parent
    if snap.parent.name != "snapshots" or not root.name.startswith("models--"):
        return None
    ref = root / "refs" / "main"
    if ref.is_file() and ref.read_text(errors="replace").strip() == snap.name:
        return None
    others = [f for f in _hf_snapshot_files(root, (path.name,)) if f.parent != snap]
    if not others:
        return None
    repo = root.name.removeprefix("models--").replace("--", "/")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    return (f"{len(others) + 1} snapshots of {repo} have {path.name} and refs/main names "
            f"{'neither' if len(others) == 1 else 'none of them'}: took the newest download, {snap.name} ({when}); "
            f"give another as --pretrained {snap.parent}/REVISION/{path.name}")
