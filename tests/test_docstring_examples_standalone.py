"""The public API's docstring examples run as copied into a fresh Python session.

``--doctest-modules`` runs each example with its module's globals, where ``torch``, ``nn``,
``np`` and the module's own functions are already defined; a user who pastes the example into
a new REPL has none of them. Here every name an example reads must be bound by the example
itself (its imports and assignments, in order) or be a builtin: the check reads the examples'
source (``symtable``), so it is fast and needs none of the examples' work to run.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import inspect
import symtable
from typing import Any

import finetune
import finetune.checkpoint

BUILTINS = frozenset(dir(builtins))


def public_objects() -> list[tuple[str, Any]]:
    """Every name in ``finetune.__all__`` and every public name ``finetune.checkpoint`` defines
    (README's own training loop imports from it), with their classes' public methods."""
    found: list[tuple[str, Any]] = []

    def add(qualname: str, obj: Any) -> None:
        found.append((qualname, obj))
        if inspect.isclass(obj):
            for name, member in vars(obj).items():
                if name.startswith("_") and name != "__init__":
                    continue
                func = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if inspect.isfunction(func) or inspect.isclass(func):
                    found.append((f"{qualname}.{name}", func))

    for name in finetune.__all__:
        obj = getattr(finetune, name)
        if not isinstance(obj, str):  # __version__
            add(f"finetune.{name}", obj)
    module = finetune.checkpoint
    for name, obj in vars(module).items():
        if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__:
            add(f"{module.__name__}.{name}", obj)
    return found


def _names(source: str) -> tuple[set[str], set[str], set[str]]:
    """The names ``source`` binds at top level, the global names it reads there, and those it
    reads inside functions, lambdas, classes and comprehensions (read when they run)."""
    binds: set[str] = set()
    reads: set[str] = set()
    inner: set[str] = set()

    def walk(table: symtable.SymbolTable, top: bool) -> None:
        for sym in table.get_symbols():
            if top and (sym.is_assigned() or sym.is_imported()):
                binds.add(sym.get_name())
            elif sym.is_referenced() and (top or sym.is_global()):
                (reads if top else inner).add(sym.get_name())
        for child in table.get_children():
            walk(child, False)

    walk(symtable.symtable(source, "<example>", "exec"), True)
    return binds, reads, inner


def unbound_names(test: doctest.DocTest) -> list[str]:
    """Names ``test``'s examples read that none of them binds first (builtins aside): a NameError
    in a fresh session. Top-level statements are taken in order; a name read inside a function or
    lambda only needs to be bound by the example's end."""
    bound: set[str] = set(BUILTINS)
    missing: list[str] = []
    later: list[str] = []
    for example in test.examples:
        if example.options.get(doctest.SKIP):
            continue
        for statement in ast.parse(example.source).body:
            binds, reads, inner = _names(ast.unparse(statement))
            missing += [name for name in sorted(reads - bound - binds) if name not in missing]
            later += sorted(inner)
            bound |= binds
    return missing + [name for name in dict.fromkeys(later) if name not in bound and name not in missing]


def docstring_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(recurse=False)
    tests: list[doctest.DocTest] = []
    seen: set[int] = set()
    for qualname, obj in public_objects():
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        tests += [t for t in finder.find(obj, qualname, globs={}) if t.examples]
    return tests


# Public names that need no example of their own in their docstring, each with the reason. A class's
# dunder methods (``__init__`` included: a class's examples construct it) are covered by the class's.
NO_EXAMPLE_NEEDED: dict[str, str] = {}


def missing_examples() -> list[str]:
    """The public names (:func:`public_objects`) whose own docstring has no ``>>>`` example, first name each."""
    finder = doctest.DocTestFinder(recurse=False)
    missing: list[str] = []
    seen: set[int] = set()
    for qualname, obj in public_objects():
        if id(obj) in seen or qualname in NO_EXAMPLE_NEEDED or qualname.rpartition(".")[2].startswith("__"):
            continue
        seen.add(id(obj))
        if not any(t.examples for t in finder.find(obj, qualname, globs={})):
            missing.append(qualname)
    return missing


def test_every_public_name_has_an_example_of_its_own():
    assert len(public_objects()) >= 80  # the check sees them: functions, classes, methods and properties
    missing = missing_examples()
    assert missing == [], "public names with no >>> example in their own docstring: " + ", ".join(missing)
    stale = [name for name in NO_EXAMPLE_NEEDED if name not in {q for q, _ in public_objects()}]
    assert stale == [], "NO_EXAMPLE_NEEDED names what is no longer public"


def test_public_examples_bind_every_name_they_use():
    tests = docstring_tests()
    assert len(tests) >= 50 and sum(len(t.examples) for t in tests) >= 250  # the check sees them
    unbound = {t.name: names for t in tests if (names := unbound_names(t))}
    assert unbound == {}, "examples that need imports to run in a fresh session: " + "; ".join(
        f"{name}: {', '.join(names)}" for name, names in unbound.items())


def test_the_check_finds_a_name_the_example_does_not_import():
    def example() -> None:
        """
        >>> x = torch.zeros(2)
        >>> from finetune import freeze
        >>> [freeze for _ in range(2)] and (lambda: nn)()
        >>> import numpy as np
        >>> def f():
        ...     return np.ones(1), y
        >>> y = 1
        """

    (test,) = doctest.DocTestFinder().find(example, "example", globs={})
    assert unbound_names(test) == ["torch", "nn"]  # y is bound before f can be called; np by its import
