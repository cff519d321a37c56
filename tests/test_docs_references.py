"""The documents name modules, objects and files that exist: every `quicflow.x.y`
reference in README.md and docs/INTERFACES.md resolves (module import, then
attributes), and every file path they name (`transport/snapshot.py`, `tests/...`,
`bench/...`, `docs/...`) is in the checkout. Stale names after a rename or a module
split fail here instead of confusing a reader."""

from __future__ import annotations

import importlib
import re
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
