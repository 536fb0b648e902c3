"""The ``finetune`` command line: parse, call the library, print, map errors to exit 2.

This module holds no logic and imports nothing heavy at start-up: each command
imports what it needs when it runs, so ``finetune --help`` answers at once.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import io
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence

import finetune
from finetune.config import (
    fraction,
    int_at_least,
    non_empty,
    positive_float,
    worker_count,
    workers_value,
)
from finetune.errors import (
    ConfigError,
    FinetuneError,
    UnreadableImagesError,
    describe_os_error,
    one_line,
)

Handler = Callable[[argparse.Namespace], int | None]


class _Parser(argparse.ArgumentParser):
    """argparse with our error line: ``finetune: error: …`` (one line, pointing at --help) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(_fail(f"{message} (see '{self.prog} --help')"))

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        """As argparse's, but a flag the command does not know points at that command's --help
        (argparse reports it from the top level: ``see 'finetune --help'``, which lists no flags)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            raise SystemExit(_fail(f"unrecognized arguments: {' '.join(extra)} (see '{prog} --help')"))
        return parsed

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        """A command's options may come between its positional arguments
        (``finetune predict --checkpoint run a.jpg -q b.jpg``): parsed as ``parse_intermixed_args``
        does, which cannot parse the top level's sub-commands (so that level parses as argparse does)."""
        if getattr(self, "_intermixing", False) or any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _fail(message: str) -> int:
    """Print ``message`` as one ``finetune: error:`` line on stderr (newlines and terminal escapes
    folded away) and return the exit status, 2.

    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     _fail("cannot load:\\n  \\x1b[1mbold\\x1b[0m detail")
    2
    >>> err.getvalue()
    'finetune: error: cannot load: bold detail\\n'
    """
    print(f"finetune: error: {one_line(message)}", file=sys.stderr, flush=True)
    return 2


def _shown(text: object) -> str:
    """``text`` for a line of plain output: as it is when every character prints, else quoted with the others
    escaped, as Python writes a string, so that a file or class name with a newline (or a terminal escape, or
    a byte that is not UTF-8) stays on its line and shows what it holds (``--json`` gives names exactly).

    >>> _shown("photos/cat 1.jpg"), _shown("été.jpg"), _shown("a\\nb\\x1b[31m.jpg")
    ('photos/cat 1.jpg', 'été.jpg', "'a\\\\nb\\\\x1b[31m.jpg'")
    """
    text = str(text)
    return text if text.isprintable() else repr(text)


def _json_text(obj: object) -> str:
    """``obj`` as JSON indented by 2, but each list of numbers on one line: a confusion matrix of 1,000
    classes is 1,000 lines, not 1,000,000 (and a tensor shape stays ``[64, 3, 7, 7]``).

    >>> print(_json_text({"confusion": [[1, 0], [2, 3]], "top": [{"class": "a", "prob": 0.5}], "x": []}))
    {
      "confusion": [
        [1, 0],
        [2, 3]
      ],
      "top": [
        {
          "class": "a",
          "prob": 0.5
        }
      ],
      "x": []
    }
    """
    def key(k: object) -> str:  # as json.dumps writes a key: True as "true", None as "null"
        return json.dumps({k: 0})[1:-4] if k is None or isinstance(k, (str, int, float)) else json.dumps(str(k))

    def text(o: object, level: int) -> str:
        pad, inner = "  " * level, "  " * (level + 1)
        if isinstance(o, dict) and o:
            return "{\n" + ",\n".join(f"{inner}{key(k)}: {text(v, level + 1)}" for k, v in o.items()) \
                + f"\n{pad}}}"
        if isinstance(o, list) and o and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in o):
            return "[\n" + ",\n".join(inner + text(v, level + 1) for v in o) + f"\n{pad}]"
        return json.dumps(o, default=str, allow_nan=False)  # (a number, string, {}, [] or a list of numbers)

    from finetune.logging import json_safe

    return text(json_safe(obj), 0)


def _print_json(obj: object) -> None:
    print(_json_text(obj))


# --------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a classifier on a folder of images (default: the built-in shapes)")
    _train_arguments(p)
    p.set_defaults(handler=_cmd_train)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """The settings of a training run (``train``, and ``lr-find``, which sets a run up the same way)."""
    p.add_argument("--config", type=non_empty, metavar="FILE.yaml", help="read settings from YAML (keys = long flag names); flags override it")
    p.add_argument("--data", type=non_empty, help="ImageFolder root (train/ and val/), flat class folders, a CSV, or 'shapes' (default)")
    p.add_argument("--val-split", type=float, help="fraction held out for validation when the data has no val/ folder (0.1)")
    p.add_argument("--model", type=non_empty, help="torchvision model name (resnet18, convnext_tiny, …) or timm:NAME")
    p.add_argument("--pretrained", type=non_empty, metavar="SOURCE", help="weights to start from: a file, 'torchvision' (the default weights), torchvision:TAG (e.g. IMAGENET1K_V1), or timm:NAME")
    p.add_argument("--dropout", type=float, metavar="P", help="dropout before the classifier (the architecture's default)")
    p.add_argument("--drop-path", type=float, metavar="P", help="stochastic depth rate (convnext, efficientnet, swin, timm models)")
    p.add_argument("--global-pool", choices=["token", "avg"],
                   help="a timm ViT's pooling: token (class token, final norm) or avg (patch tokens' mean, then fc_norm) "
                        "(the --pretrained file's: avg for MAE's fine-tuned ViTs; else the model's own)")
    p.add_argument("--exclude", type=non_empty, nargs="+", metavar="PATTERN", help="glob patterns of weight names not to load (e.g. 'fc.*')")
    p.add_argument("--shape-mismatch", choices=["skip", "error", "adapt"], help="what to do with tensors of another shape (skip)")
    p.add_argument("--trust", action="store_true", default=None, help="allow checkpoints that run code when loaded (pickled modules)")
    p.add_argument("--epochs", type=int, help="passes over the training data (14)")
    p.add_argument("--batch-size", type=int, help="images per batch, per process under torchrun (shapes: 32; otherwise 64)")
    p.add_argument("--lr", type=float, help="peak learning rate (adamw: 3e-3 from scratch, 5e-4 with --pretrained; "
                   "sgd: 0.1 / 0.01)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], help="(adamw)")
    p.add_argument("--weight-decay", type=float, help="not on biases and norm layers (adamw: 0.05, sgd: 5e-4)")
    p.add_argument("--momentum", type=float, help="with --optimizer sgd (0.9)")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up before the cosine decay (1)")
    p.add_argument("--label-smoothing", type=float, help="(0.1)")
    p.add_argument("--mixup", type=float, metavar="ALPHA", help="Mixup of training batches, Beta(ALPHA, ALPHA) (off; 0.2 is common)")
    p.add_argument("--cutmix", type=float, metavar="ALPHA", help="CutMix of training batches (off; 1.0 is common); with --mixup, one per batch")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999); it is what val_* and "
                        "the best checkpoint measure, and what eval/predict use")
    p.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the gradients' total norm (off)")
    p.add_argument("--class-weights", choices=["none", "balanced"],
                   help="balanced: the training loss weighs each class by n / (classes x its images), so rare "
                        "classes count as much as common ones (none: default)")
    p.add_argument("--grad-accum", type=int, metavar="N",
                   help="batches per optimizer step (gradient accumulation): the effective batch is N x --batch-size")
    p.add_argument("--early-stop", type=int, metavar="EPOCHS",
                   help="stop when val top-1 has not improved for this many epochs (off)")
    p.add_argument("--img-size", type=int, help="training/eval resolution (shapes: 32; otherwise the pretrained weights' own size, else 224)")
    p.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="RandomResizedCrop area range")
    p.add_argument("--crop-pct", type=float, metavar="PCT",
                   help="eval: resize the shorter side to img-size/PCT, then crop the centre (the pretrained "
                        "weights' own, e.g. timm's; else 0.875)")
    p.add_argument("--interpolation", choices=["bilinear", "bicubic"],
                   help="eval resize filter (the pretrained weights' own; else bilinear)")
    p.add_argument("--crop-mode", choices=["center", "squash"],
                   help="eval resize: the shorter side (center) or both sides (squash, some timm weights') "
                        "to img-size/crop-pct, then the centre crop (the pretrained weights' own; else center)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + flip of training images (default); --no-augment: the eval transform")
    p.add_argument("--workers", type=workers_value,
                   help="decoding worker processes, or 'auto' (a short probe picks the fastest)")
    p.add_argument("--decode", choices=["auto", "cpu", "gpu"], help="where JPEGs are decoded (gpu: nvjpeg)")
    p.add_argument("--cache", choices=["none", "ram", "gpu"], help="keep decoded images for later epochs (training images at the eval resize, shorter side "
                   "img-size/crop-pct, e.g. 256 for 224: crops are drawn from that copy, as fastai's presizing)")
    p.add_argument("--prefetch", choices=["auto", "none", "thread", "cuda"], help="overlap loading with compute")
    p.add_argument("--auto-augment", choices=["none", "trivialaugment", "randaugment"], help="extra training augmentation")
    p.add_argument("--strict-data", action=argparse.BooleanOptionalAction, default=None, help="stop on unreadable images instead of skipping them")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(auto: cuda when there is one)")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], help="mixed precision (auto: bf16 on CUDA, fp16 before Ampere, off on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (off)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p.add_argument("--seed", type=int, help="random seed of the split, initialisation and data order (0)")
    p.add_argument("--out", type=non_empty, metavar="RUN_DIR", help="run directory (default: runs/<model>-<data>-<time>)")
    p.add_argument("--resume", type=non_empty, metavar="auto|PATH", help="continue from the newest checkpoint in --out, from a file, or from a run directory (its newest checkpoint; --out: that directory)")
    p.add_argument("--keep-last", type=int, help="how many recent checkpoints to keep (3)")
    p.add_argument("--save-every-steps", type=int, metavar="N", help="also checkpoint every N optimizer steps")
    p.add_argument("--save-every-minutes", type=float, metavar="M", help="also checkpoint every M minutes")
    p.add_argument("--async-save", action=argparse.BooleanOptionalAction, default=None, help="write checkpoints in a background thread (default: on with CUDA)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total (for tests and smoke runs)")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None, help="write TensorBoard events to RUN_DIR/tb")
    p.add_argument("--freeze", type=non_empty, nargs="+", metavar="PATTERN", help="freeze parameters/modules matching these globs (layer1, '*.bn*')")
    p.add_argument("--train-only", type=non_empty, nargs="+", metavar="PATTERN", help="freeze everything except these")
    p.add_argument("--linear-probe", action=argparse.BooleanOptionalAction, default=None, help="train only the classifier head")
    p.add_argument("--cache-features", action=argparse.BooleanOptionalAction, default=None, help="with --linear-probe: compute backbone features once")
    p.add_argument("--bn", choices=["frozen", "eval", "train"], help="BatchNorm in frozen parts: frozen (default), eval, train")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun: BatchNorm statistics over all processes' batches (SyncBatchNorm)")
    p.add_argument("--lr-mult", type=non_empty, nargs="+", metavar="PATTERN=X", help="learning-rate multipliers, e.g. layer4=0.1")
    p.add_argument("--layer-decay", type=float, metavar="X", help="multiply the lr by X per block away from the head")
    p.add_argument("--unfreeze", type=non_empty, nargs="+", metavar="PATTERN@EPOCH", help="make PATTERN trainable from EPOCH (counted from 1)")


def _add_lr_find(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: a few steps with a growing lr, and the lr to use")
    _train_arguments(p)
    p.add_argument("--start-lr", type=positive_float, default=1e-7, help="first learning rate (1e-7)")
    p.add_argument("--end-lr", type=positive_float, default=10.0, help="last learning rate (10)")
    p.add_argument("--num-steps", type=int_at_least(2), default=100, help="optimizer steps (100)")
    p.add_argument("--json", action="store_true", help="the whole curve and the readings as JSON")
    p.set_defaults(handler=_cmd_lr_find)


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from finetune.config import config_from_args

    # the flags of a run's directory and length mean nothing to the range test (it writes nothing and takes
    # --num-steps steps): say so rather than take them in silence
    # (--out RUN --resume auto|PATH with a config.yaml there does mean something: the run's settings)
    reads_run = bool(args.resume and args.out and os.path.isfile(os.path.join(args.out, "config.yaml")))
    ignored = [f"--{name.replace('_', '-')}" for name in ("out", "resume", "tensorboard", "keep_last", "save_every_steps",
                                                        "save_every_minutes", "async_save", "max_steps", "early_stop", "epochs")
               if getattr(args, name, None) not in (None, False) and not (reads_run and name in ("out", "resume"))]
    if ignored:
        print(f"finetune: warning: lr-find writes no run directory and takes --num-steps steps: {', '.join(ignored)} "
              "ignored", file=sys.stderr, flush=True)
    # nor do the learning rate's and the weights' own schedule: the test sets the lr of every step itself and
    # reads the loss of the weights it trains
    swept = [f"--{name.replace('_', '-')}" for name in ("lr", "warmup_epochs", "ema")
             if getattr(args, name, None) is not None]
    if swept:
        print(f"finetune: warning: lr-find sets each step's learning rate itself (--start-lr to --end-lr) and reads "
              f"the loss of the weights it trains: {', '.join(swept)} ignored", file=sys.stderr, flush=True)
    cfg = config_from_args(args)
    from finetune.lr_find import lr_find

    result = lr_find(cfg, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.num_steps,
                     quiet=args.quiet or args.json)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.table())
        print(f"use it with: finetune train ... --lr {result.suggested:.2g}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from finetune.config import config_from_args

    cfg = config_from_args(args)  # bad settings are reported before torch is imported
    from finetune.train import train

    result = train(cfg, quiet=args.quiet)
    if not args.quiet and result.rank == 0:
        print(f"run directory: {_shown(result.run_dir)}")
        if result.best_epoch >= 0:
            print(f"best val top-1 {result.best_top1:.2%} at epoch {result.best_epoch + 1}")
    return 0


# --------------------------------------------------------------------------- eval / predict
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5, loss and per-class accuracy of a checkpoint")
    p.add_argument("--checkpoint", type=non_empty, required=True, metavar="CK",
                   help="a checkpoint file, best.safetensors, or a run directory (its best.pt)")
    p.add_argument("--data", type=non_empty, help="folder to evaluate (default: the val split of the checkpoint's dataset)")
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="(64)")
    p.add_argument("--workers", type=workers_value, default="0", help="decoding worker processes, or 'auto' (0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="(auto: cuda when there is one)")
    p.add_argument("--tta", action="store_true",
                   help="average each image's prediction with its mirror image's (test-time augmentation)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from finetune.train import evaluate_checkpoint

    res = evaluate_checkpoint(args.checkpoint, data=args.data, batch_size=args.batch_size,
                              workers=args.workers, device=args.device, quiet=args.quiet or args.json, tta=args.tta)
    if args.json:
        _print_json(res)
        return 0
    print(f"top-1 {res['top1']:.2%}  top-{res['topk']} {res['top5']:.2%}  loss {res['loss']:.4f}  ({res['images']} images"
          + (", each averaged with its mirror image)" if res.get("tta") else ")"))
    width = min(max(len(_shown(c)) for c in res["per_class"]), 40)  # (one 200-character class: not every line 200 wide)
    for name, acc in res["per_class"].items():
        count = res["per_class_images"][name]
        print(f"  {_shown(name):<{width}}  {acc:8.2%}  ({round(acc * count)}/{count})" if acc is not None
              else f"  {_shown(name):<{width}}  {'-':>8}  (no images)")
    if res.get("most_confused"):
        print("most confused (true -> predicted: images):")
        for pair in res["most_confused"][:10]:
            print(f"  {_shown(pair['true'])} -> {_shown(pair['predicted'])}: {pair['images']}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="class names and probabilities for images")
    p.add_argument("--checkpoint", type=non_empty, required=True, metavar="CK",
                   help="a checkpoint file, best.safetensors, or a run directory (its best.pt)")
    p.add_argument("inputs", type=non_empty, nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--topk", type=int_at_least(1), default=5, help="classes per image (5)")
    p.add_argument("--tta", action="store_true", help="average with the mirror image's prediction (test-time augmentation)")
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="(64)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="(auto: cuda when there is one)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--list-unreadable", action="store_true",
                   help="also a record for each image that cannot be read, in its place: with --json "
                        '{"path": ..., "error": ...} (no "top"), else PATH: error: ...')
    p.set_defaults(handler=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from finetune.train import predict_files

    try:
        preds, unreadable = predict_files(args.checkpoint, args.inputs, topk=args.topk, batch_size=args.batch_size,
                                          device=args.device, tta=args.tta,
                                          unreadable_records=args.list_unreadable, quiet=args.quiet), None
    except UnreadableImagesError as e:  # the readable images' predictions still print; the error line counts the rest
        preds, unreadable = e.predictions, e
    if args.json:
        _print_json(preds)
    else:
        for item in preds:
            if "error" in item:
                print(f"{_shown(item['path'])}: error: {_shown(item['error'])}")
                continue
            top = "  ".join(f"{_shown(p['class'])} {p['prob']:.3f}" for p in item["top"])
            print(f"{_shown(item['path'])}: {top}")
    return 0 if unreadable is None else _unreadable_named(unreadable)


def _unreadable_named(error: UnreadableImagesError) -> int:
    """After the other images' output: each unreadable named file on stderr (when there are several),
    then the one error line that counts them; exit status 2."""
    sys.stdout.flush()
    if len(error.unreadable) > 1:
        for message in error.unreadable:
            print(f"finetune: {one_line(message)}", file=sys.stderr)
    return _fail(str(error))


# --------------------------------------------------------------------------- data
def _add_make_shapes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-shapes", help="write the built-in shapes dataset as JPEG folders")
    p.add_argument("dir", type=non_empty, help="folder to write (absent or empty)")
    p.add_argument("--per-class", type=int_at_least(1), default=None,
                   help="training images per class (500 and 50 validation ones, as the built-in dataset; "
                        "given: a sixth of it for validation)")
    p.add_argument("--size", type=int_at_least(16), default=None, help="image side in pixels (64)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed of the generated images (0)")
    p.set_defaults(handler=_cmd_make_shapes)


def _cmd_make_shapes(args: argparse.Namespace) -> int:
    from finetune.data.shapes import ShapesSpec, make_shapes

    spec = ShapesSpec()
    # without --per-class: the built-in dataset's numbers (`--data shapes`: 500 + 50 per class), not 500 + a sixth
    root = make_shapes(args.dir, per_class=spec.per_class if args.per_class is None else args.per_class,
                       val_per_class=spec.val_per_class if args.per_class is None else None,
                       size=spec.size if args.size is None else args.size, seed=args.seed)
    print(f"shapes dataset ready in {root}")
    return 0


# --------------------------------------------------------------------------- weights
def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="what a checkpoint holds: format, metadata, tensors, optimizer state")
    p.add_argument("path", type=non_empty, metavar="PATH", help="checkpoint file or folder (any format finetune reads)")
    p.add_argument("--model", type=non_empty, metavar="ARCH", help="also show the load report against this architecture")
    p.add_argument("--optimizer", action="store_true", help="summarise the optimizer state")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trust", action="store_true", help="allow files that run code when loaded (pickled modules)")
    p.set_defaults(handler=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from finetune.weights import format_inspect, inspect_checkpoint

    info = inspect_checkpoint(args.path, model=args.model, optimizer=args.optimizer, trust=args.trust)
    if args.json:
        _print_json(info)
    else:
        print(format_inspect(info))
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="write a checkpoint's clean weights as .safetensors or .pt")
    p.add_argument("src", type=non_empty, metavar="SRC", help="checkpoint file or folder (any format finetune reads)")
    p.add_argument("dst", type=non_empty, metavar="DST", help="output file: .safetensors, or .pt/.pth/.bin for torch.save")
    p.add_argument("--ema", action="store_true", help="write the EMA weights instead of the raw ones")
    p.add_argument("--half", action="store_true", help="store floating-point tensors as float16")
    p.add_argument("--strip-prefix", type=non_empty, default="auto", metavar="auto|PREFIX|none",
                   help="auto (default): also remove a Lightning file's network attribute; a literal PREFIX to "
                        "remove; none: nothing more (wrapper prefixes module./_orig_mod. are always removed)")
    p.add_argument("--trust", action="store_true", help="allow files that run code when loaded (pickled modules)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists (default: refuse)")
    p.set_defaults(handler=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from finetune.weights import convert, read_state_dict
    from finetune.weights.tools import tensor_bytes

    out = convert(args.src, args.dst, ema=args.ema, half=args.half, strip_prefix=args.strip_prefix, trust=args.trust,
                  overwrite=args.force)
    if not args.quiet:
        sd = read_state_dict(out)
        mb = sum(tensor_bytes(v) for v in sd.values()) / 1e6  # a sparse tensor: what it stores, not its dense size
        print(f"wrote {out}: {len(sd)} tensors, {mb:.2f} MB")
    return 0


# --------------------------------------------------------------------------- bench-data
def _add_bench_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-data", help="measure the input pipeline against plain DataLoader and DataLoaderX here")
    p.add_argument("--data", type=non_empty, required=True, help="ImageFolder root (class sub-folders; a train/ sub-folder is used if present) or 'shapes'")
    p.add_argument("--img-size", type=int_at_least(16), default=224, help="(224)")
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="(64)")
    p.add_argument("--seconds", type=positive_float, default=3.0, help="seconds per measurement (3)")
    p.add_argument("--repeats", type=int_at_least(1), default=1, help="rounds over all pipelines; each keeps its best (1)")
    p.add_argument("--workers", type=worker_count, nargs="+", metavar="N", help="worker counts to try (default 0..max(4, cores))")
    p.add_argument("--no-cache", action="store_true", help="skip the cache='ram' rows")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_bench_data)


def _cmd_bench_data(args: argparse.Namespace) -> int:
    from finetune.data.bench import bench_root, format_table, run_bench

    root = bench_root(args.data)
    progress = None if (args.quiet or args.json) else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run_bench(root, img_size=args.img_size, batch_size=args.batch_size, seconds=args.seconds,
                       workers=args.workers, full=False, cache=not args.no_cache, repeats=args.repeats,
                       progress=progress)
    if args.json:
        print(report.to_json())
        return 0
    print(format_table(report))
    print(f"decode-only ceiling: {report.ceiling:.0f} img/s ({report.cores} cores)")
    print(f"recommended: {report.recommended}")
    return 0


# --------------------------------------------------------------------------- models
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="architectures with ImageNet top-1/top-5, parameters and cached weights")
    p.add_argument("pattern", nargs="?", default="*", help="glob on names, e.g. 'resnet*' or 'timm:convnext*'")
    p.add_argument("--timm", action="store_true", help="also list timm's pretrained tags (timm:NAME.TAG)")
    p.add_argument("--cached", action="store_true", help="only weights already in the local cache")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(handler=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from finetune.models import format_model_table, model_table

    matching = model_table(args.pattern, include_timm=args.timm)
    if not matching:
        raise ConfigError(f"no model matches '{args.pattern}': `finetune models` lists them all")
    rows = [r for r in matching if r.cached or not args.cached]
    if args.cached and "." not in args.pattern and not args.pattern.startswith("timm:"):
        # another of torchvision's weights than the default may be the cached one (resnet50.IMAGENET1K_V1)
        shown = {r.weights for r in rows}
        rows += [r for r in model_table(args.pattern + ".*") if r.cached and r.weights not in shown]
    if not rows:  # (an answer, not an error: a script asking what is cached gets [] and exit 0)
        if args.json:
            _print_json([])
        else:
            print(f"none of the {len(matching)} models matching '{args.pattern}' has cached weights")
        return 0
    if args.json:
        _print_json([asdict(r) for r in rows])
        return 0
    print(format_model_table(rows))
    return 0


def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="output shape and parameters of every layer for an input size")
    p.add_argument("model", type=non_empty, metavar="MODEL", help="torchvision name or timm:NAME")
    p.add_argument("--img-size", type=int_at_least(1), default=224, help="(224)")
    p.add_argument("--num-classes", type=int_at_least(1), default=1000, help="outputs of the head (1000)")
    p.add_argument("--depth", type=int_at_least(1), default=2, help="levels of nested modules to show (2)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_summary)


def _cmd_summary(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from finetune.errors import ModelError
    from finetune.models import create_model, layer_summary

    summary = layer_summary(create_model(args.model, num_classes=args.num_classes, img_size=args.img_size),
                            args.img_size, depth=args.depth)
    if args.json:
        _print_json(asdict(summary))
    else:
        print(summary)
    if not summary.ok:
        raise ModelError(f"{args.model} fails at {args.img_size}x{args.img_size} in layer '{summary.failed_at}': "
                         f"{summary.error}")
    return 0


def _add_cam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cam", help="class activation maps (Grad-CAM and family) of a checkpoint's predictions")
    p.add_argument("checkpoint", type=non_empty, nargs="?", metavar="CHECKPOINT",
                   help="a run directory (its best.pt), a checkpoint file or a best.safetensors")
    p.add_argument("inputs", type=non_empty, nargs="*", metavar="IMAGE_OR_DIR",
                   help="images to explain (default: images of the run's validation split)")
    p.add_argument("--checkpoint", dest="checkpoint_flag", type=non_empty, metavar="CHECKPOINT",
                   help="the checkpoint given as predict and eval take it (then every argument is an image or folder)")
    p.add_argument("--method", type=non_empty, default="gradcam", help="gradcam (default), gradcam++, xgradcam, layercam, hirescam, "
                   "eigengradcam, cam (no backward; global-average-pool + Linear heads), eigencam (no gradient), "
                   "scorecam, ablationcam (no gradient; one forward per channel and image: slow)")
    p.add_argument("--layer", type=non_empty, metavar="NAME", help="feature layer (default: found by probing the model)")
    p.add_argument("--target", type=non_empty, metavar="CLASS", help="explain this class instead of each prediction")
    p.add_argument("--out", type=non_empty, metavar="DIR", help="output folder (default: RUN/cam/METHOD)")
    p.add_argument("--limit", type=int_at_least(1), default=32, help="at most this many images (32)")
    p.add_argument("--alpha", type=fraction, default=0.5, help="weight of the heat map in the overlay (0.5)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, help="(16)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="(auto: cuda when there is one)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(handler=_cmd_cam)


def _cmd_cam(args: argparse.Namespace) -> int:
    from finetune.cam import explain

    checkpoint, inputs = args.checkpoint, args.inputs
    if args.checkpoint_flag is not None:  # `cam --checkpoint RUN IMAGE...`, as predict takes it
        checkpoint, inputs = args.checkpoint_flag, [args.checkpoint, *inputs] if args.checkpoint else inputs
    if checkpoint is None:
        raise ConfigError("cam needs a checkpoint: `finetune cam RUN_OR_CHECKPOINT [IMAGE_OR_DIR ...]` "
                          "(or --checkpoint RUN_OR_CHECKPOINT)")
    try:
        report, unreadable = explain(checkpoint, inputs or None, method=args.method, layer=args.layer,
                                     target=args.target, out=args.out, limit=args.limit, alpha=args.alpha,
                                     batch_size=args.batch_size, device=args.device, quiet=args.quiet), None
    except UnreadableImagesError as e:  # the other images' overlays are written and reported; then the error
        if e.result is None:
            raise
        report, unreadable = e.result, e
    if args.json:
        _print_json(report.records)
    else:
        layer = report.records[0]["layer"] if report.records else args.layer
        n = len(report.records)
        print(f"{args.method} from layer '{layer}': {n} overlay{'' if n == 1 else 's'} in {_shown(report.out_dir)}")
        loc = report.localisation
        if loc is not None:
            print(f"localisation on {loc.images} images with boxes: pointing game {loc.pointing:.1%}, "
                  f"energy in box {loc.energy:.1%}, IoU {loc.iou:.3f}")
    return 0 if unreadable is None else _unreadable_named(unreadable)


# ----- subcommands of other modules are registered below this line -----
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train,
    _add_lr_find,
    _add_eval,
    _add_predict,
    _add_make_shapes,
    _add_inspect,
    _add_convert,
    _add_bench_data,
    _add_models,
    _add_summary,
    _add_cam,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``finetune`` argument parser: one subcommand per command, each with ``-q`` and ``--debug``.

    Flags left out are None, so :func:`finetune.config.config_from_args` can tell them from defaults.

    >>> from finetune.cli import build_parser
    >>> args = build_parser().parse_args(["train", "--epochs", "3", "--freeze", "layer1", "layer2", "-q"])
    >>> args.command, args.epochs, args.freeze, args.quiet, args.lr
    ('train', 3, ['layer1', 'layer2'], True, None)
    """
    parser = _Parser(prog="finetune", description="Fine-tune pretrained image classifiers: correct by construction, measured, tested.")
    parser.add_argument("--version", action="version", version=f"finetune {finetune.__version__}")
    # -q/--debug work before the command too (`finetune --debug train …`): the command's copies only set them when given
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, less output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars, less output")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # every subcommand takes -q/--debug
    orig_add = sub.add_parser

    def add_parser(name: str, **kw):  # type: ignore[no-untyped-def]
        return orig_add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for add in _COMMANDS:
        add(sub)
    return parser


# the commands whose results are what they print (the others write files: a run directory, overlays, a checkpoint)
_PRINTS_RESULTS = frozenset({"lr-find", "eval", "predict", "inspect", "bench-data", "models", "summary"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``finetune`` command line on ``argv``; return the exit status.

    A :class:`~finetune.errors.FinetuneError` is printed as one ``finetune: error:`` line
    on stderr (exit status 2); ``--debug`` or ``FINETUNE_DEBUG=1`` shows the traceback instead.

    >>> import tempfile
    >>> from finetune.cli import main
    >>> main(["make-shapes", tempfile.mkdtemp() + "/shapes", "--per-class", "1", "--size", "16"])  # doctest: +ELLIPSIS
    shapes dataset ready in .../shapes
    0
    >>> main(["eval", "--checkpoint", "/nonexistent.pt"])   # "finetune: error: ..." on stderr
    2
    """
    if sys.stderr is None:  # `2>&-`: Python's stderr is None, and print(file=None) writes to stdout, into the results
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
    encoding = (getattr(sys.stdout, "encoding", None) or "utf-8").lower().replace("-", "").replace("_", "")
    if encoding != "utf8" and isinstance(sys.stdout, io.TextIOWrapper):
        # a path or class name the output's encoding lacks (PYTHONIOENCODING=ascii, a Latin-1 terminal) is written
        # escaped, as stderr does, not a UnicodeEncodeError after the work is done
        sys.stdout.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if sys.stdout is None and args.command in _PRINTS_RESULTS:  # `>&-`: the results would be dropped in silence
        return _fail(f"standard output is closed: finetune {args.command} prints its results there "
                     "(redirect it to a file instead)")
    debug = args.debug or os.environ.get("FINETUNE_DEBUG") == "1"
    world = os.environ.get("WORLD_SIZE", "1")
    if args.command not in ("train", "lr-find") and world not in ("", "1"):  # (lr-find says so itself)
        # every process would run the whole command: its output N times, its files written N times at once
        return _fail(f"finetune {args.command} runs in one process, not under torchrun (WORLD_SIZE={world} is set): "
                     f"run finetune {args.command} without torchrun (only finetune train uses several processes)")
    with warnings.catch_warnings():  # finetune's own warnings as one `finetune: warning:` line each
        warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)
        return _run(args, debug)


def entry() -> None:
    """The ``finetune`` command: :func:`main`, then exit with its status. A Ctrl-C or SIGTERM that arrives once
    the command is done (while the interpreter shuts down: atexit joins of worker processes, threads) exits at
    once with that status: a run that finished and saved must not read as killed by a signal to a scheduler
    or script."""
    status = main()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, functools.partial(_exit_now, status))
        # the shutdown's waits (threads, exit functions) run here, under these handlers: after them Python
        # removes its handlers and tears down (garbage collection, the modules: a second or more with torch)
        # with the default actions, and a SIGTERM then (a stop's repeat, torchrun passing on the scheduler's)
        # would end the command that is done as killed by it (-15): it is ignored from there on
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    sys.exit(status)


def _exit_now(status: int, signum: int, frame: object) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


def _show_warning(default: Callable[..., None], message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: object = None, line: str | None = None) -> None:
    """Print a warning raised in finetune's own code as one ``finetune: warning:`` line (process 0
    only under torchrun, as :func:`finetune.train.warn`); other libraries' warnings as Python does."""
    if not os.path.abspath(filename).startswith(os.path.dirname(os.path.abspath(__file__)) + os.sep):
        default(message, category, filename, lineno, file, line)
    elif os.environ.get("RANK", "0") in ("", "0"):
        print(f"finetune: warning: {one_line(message)}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, debug: bool) -> int:
    """The command's handler, its errors mapped to one line and exit status 2."""
    # SIGTERM outside `train()` (which, from its start, finishes the step, saves and exits 0) ends like Ctrl-C: one line, exit 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, functools.partial(_raise_interrupt, os.getpid())) if in_main_thread else None
    try:
        return int(args.handler(args) or 0)
    except FinetuneError as e:
        return _error(str(e), debug)
    except KeyboardInterrupt:
        return _error("interrupted", debug)
    except MemoryError:
        return _error("out of memory: lower --batch-size or --img-size", debug)
    except BrokenPipeError:  # `finetune inspect x | head`: the reader stopped reading; no error line
        _stdout_to_devnull()
        return 128 + signal.SIGPIPE  # what a shell reports for a program ended by SIGPIPE
    except OSError as e:  # the environment: permissions, a full or read-only disk, a file where a folder should be
        return _error(describe_os_error(e), debug)
    except Exception as e:  # a case the library does not check yet: still one line, the traceback with --debug
        if isinstance(e, RuntimeError) and any(s in str(e).lower() for s in ("out of memory", "can't allocate memory")):
            return _error("out of memory: lower --batch-size or --img-size", debug)  # torch's CPU/CUDA allocators
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 300 else detail[:300] + "…"
        return _error(f"unexpected {type(e).__name__}: {detail} (this is a bug in finetune: rerun with --debug "
                      "for the traceback and report it)", debug)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _error(message: str, debug: bool) -> int:
    """The one error line (exit status 2); with ``--debug`` the traceback of the exception being handled first."""
    if threading.current_thread() is threading.main_thread():
        # stopping already: a SIGTERM now (torchrun stopping the other processes after one failed) must not raise
        # KeyboardInterrupt into the cleanup that follows (the data workers' shutdown as the error's frames go):
        # a traceback after the error line, the workers left behind (_run restores the handler after it)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if debug:
        import traceback

        traceback.print_exc()
    return _fail(message)


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of output nobody reads
    does not raise a second BrokenPipeError at exit (Python's documented recipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())


def _raise_interrupt(pid: int, signum: int, frame: object) -> None:
    if os.getpid() != pid:  # a forked worker inherited the handler: die of the signal, quietly
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    entry()
