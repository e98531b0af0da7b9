"""Imports point down only: models <- streaming <- agent <- frontends <- benchmarks <- cli (checked on the
source, every import statement, including the ones inside functions)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["models", "streaming", "agent", "frontends", "benchmarks", "cli"]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_every_import_points_down():
    wrong = []
    for level, package in enumerate(LAYERS):
        above = set(LAYERS[level + 1:])
        for path in (ROOT / package).rglob("*.py"):
            wrong += [f"{path.relative_to(ROOT)} imports {name}" for name in _imports(path) if name in above]
    assert not wrong, "\n".join(wrong)
