"""scripts/audit.py tells a known vulnerability (fail) from an unreachable service (warn)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit", ROOT / "scripts" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


audit = _load_audit()

CLEAN_DEP = {"name": "httpx", "version": "0.29.0", "vulns": []}
SKIPPED_DEP = {"name": "httpx", "skip_reason": "Dependency not found on PyPI and could not be"}
VULN_DEP = {
    "name": "aiohttp",
    "version": "3.9.0",
    "vulns": [{"id": "PYSEC-2024-24", "fix_versions": ["3.9.2"], "aliases": []}],
}
PROXY_TRACEBACK = "requests.exceptions.ProxyError: HTTPSConnectionPool(host=..., port=443)"


def _report(*deps: dict[str, Any]) -> str:
    return json.dumps({"dependencies": list(deps), "fixes": []})


@pytest.mark.parametrize(
    ("returncode", "report", "stderr", "status", "says"),
    [
        (0, _report(CLEAN_DEP), "", audit.CLEAN, "no known vulnerabilities in 1"),
        (1, _report(CLEAN_DEP, VULN_DEP), "", audit.FAILED, "PYSEC-2024-24 (fixed in 3.9.2)"),
        (1, _report(VULN_DEP, SKIPPED_DEP), "", audit.FAILED, "aiohttp 3.9.0"),
        (0, _report(SKIPPED_DEP, SKIPPED_DEP), "", audit.UNREACHABLE, "skipped for 2 of 2"),
        (0, _report(CLEAN_DEP, SKIPPED_DEP), "", audit.UNREACHABLE, "skipped for 1 of 2"),
        (1, "", PROXY_TRACEBACK, audit.UNREACHABLE, "service unreachable"),
        (1, "", "Tip: your network may be blocking this service", audit.UNREACHABLE, "skipped"),
        (1, "", "ERROR: invalid requirements input: x", audit.FAILED, "invalid requirements"),
        (1, _report(CLEAN_DEP), "ERROR: boom", audit.FAILED, "boom"),
    ],
)
def test_verdict(returncode: int, report: str, stderr: str, status: int, says: str) -> None:
    got, lines = audit.verdict(returncode, report, stderr)
    assert got == status
    assert any(says in line for line in lines), lines


def test_a_skip_says_how_to_audit_by_hand_in_one_line() -> None:
    _, lines = audit.verdict(1, "", PROXY_TRACEBACK)
    assert len(lines) == 1
    assert "scripts/audit.py" in lines[0]


def test_the_lock_is_pinned_and_hashed() -> None:
    requirements = [
        line for line in audit.LOCK.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith((" ", "#"))
    ]  # fmt: skip
    assert requirements
    for line in requirements:
        assert "==" in line and line.endswith("\\"), line
