"""The documents name modules, objects and files that exist: every `quicflow.x.y`
reference in README.md and docs/INTERFACES.md resolves (module import, then
attributes), and every file path they name (`transport/snapshot.py`, `tests/...`,
`bench/...`, `docs/...`) is in the checkout. Stale names after a rename or a module
split fail here instead of confusing a reader."""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/INTERFACES.md"]
LAYERS = "wire|crypto|tls|transport|endpoint|datapath|migration|aio|apps|h3|cli"
PATH = (r"(?<![\w./-])((?:src/quicflow/|tests/|bench/|docs/|(?:" + LAYERS + r")/)"
        r"[\w/.-]*\w\.(?:py|md|nft|go|mjs))")


def _code_spans(doc: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", (ROOT / doc).read_text())


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    obj: object | None = None
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        break
    if not isinstance(obj, ModuleType):
        return False
    for name in parts[i:]:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


@pytest.mark.parametrize("doc", DOCS)
def test_dotted_references_resolve(doc: str) -> None:
    names = {m for span in _code_spans(doc)
             for m in re.findall(r"\bquicflow(?:\.[A-Za-z_]\w*)+", span)}  # fmt: skip
    assert names, doc
    missing = sorted(n for n in names if not _resolve(n))
    assert not missing, f"{doc} names what does not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_file_paths_exist(doc: str) -> None:
    paths = set()
    for span in _code_spans(doc):
        paths.update(re.findall(PATH, span))
    assert paths, doc
    missing = sorted(
        p for p in paths
        if not (ROOT / p).exists() and not (ROOT / "src/quicflow" / p).exists()
    )  # fmt: skip
    assert not missing, f"{doc} names files that do not exist: {missing}"


def _subparsers(parser: argparse.ArgumentParser, path: str = "quicflow"
                ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, f"{path} {name}")


def test_every_command_line_option_has_help_and_is_in_the_readme() -> None:
    from quicflow.cli.main import build_parser

    readme = (ROOT / "README.md").read_text()
    problems = []
    for command, parser in _subparsers(build_parser()):
        for action in parser._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if not longs or longs == ["--help"]:
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                problems.append(f"{command} {longs[0]}: no help text")
            if not any(re.search(r"(?<![\w-])" + re.escape(o) + r"(?![\w-])", readme)
                       for o in action.option_strings):
                problems.append(f"{command} {longs[0]}: not in README.md")
    assert not problems, problems
