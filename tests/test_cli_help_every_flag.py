"""Every option of every command says what it does (or at least its default) in its --help."""

from __future__ import annotations

import argparse

from finetune.cli import build_parser


def test_every_option_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bare = {name: [a.option_strings[0] if a.option_strings else a.dest for a in p._actions
                   if not a.help and not isinstance(a, argparse._HelpAction)]
            for name, p in sub.choices.items()}
    assert not any(bare.values()), {k: v for k, v in bare.items() if v}
