"""The layering that keeps a channel one module: only the composition roots know the registry.

The roots (pipeline/app.py, the CLI, the HTTP API, the benchmarks and the tests) read the
channel registry and may reach the workers; everything below them is handed a ChannelSet.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOTS = ("pipeline/app.py", "pipeline/cli/", "pipeline/api/", "channels/registry.py")
BELOW = ("pipeline", "channels", "workers", "monitoring")


def imports(path: Path) -> Iterator[str]:
    """Every module a file imports, deferred imports inside functions included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def below_the_roots() -> list[Path]:
    files = [path for top in BELOW for path in sorted((ROOT / top).rglob("*.py"))]
    return [p for p in files if not str(p.relative_to(ROOT)).startswith(ROOTS)]


@pytest.mark.parametrize("path", below_the_roots(), ids=lambda p: str(p.relative_to(ROOT)))
def test_below_the_roots_nothing_imports_the_registry(path: Path) -> None:
    found = [name for name in imports(path) if name == "channels.registry"]
    assert not found, f"{path.relative_to(ROOT)} imports the registry: hand it a ChannelSet"


@pytest.mark.parametrize(
    "path",
    [p for p in below_the_roots() if not p.is_relative_to(ROOT / "workers")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_below_the_roots_only_workers_import_workers(path: Path) -> None:
    found = [name for name in imports(path) if name.split(".")[0] == "workers"]
    assert not found, f"{path.relative_to(ROOT)} imports {found}"


def test_the_check_sees_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from channels.registry import CHANNELS\nimport workers.send\n")
    assert set(imports(sample)) == {"workers.send", "channels.registry"}
