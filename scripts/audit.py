"""Audits requirements.lock for known vulnerabilities with pip-audit.

Exit status: 0 no known vulnerability; 1 a vulnerability (listed) or a broken lock or
run; 2 the vulnerability service did not answer, so nothing or not everything was audited.
Run it as `.venv/bin/python scripts/audit.py` from a machine that reaches the service.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
# The whole run, so a service that hangs cannot stall CI; one request gets REQUEST_TIMEOUT.
RUN_TIMEOUT = 120
REQUEST_TIMEOUT = 10
CLEAN, FAILED, UNREACHABLE = 0, 1, 2
# What pip-audit's stderr shows when the service, not the lock, is the problem.
NETWORK_ERRORS = ("requests.exceptions.", "network may be blocking", "ServiceError")
MANUAL = "run `.venv/bin/python scripts/audit.py` where the vulnerability service is reachable"


def verdict(returncode: int, report: str, stderr: str) -> tuple[int, list[str]]:
    """Returns the exit status and the lines to print for one pip-audit run."""
    try:
        dependencies = json.loads(report)["dependencies"]
    except (ValueError, KeyError, TypeError):
        if any(sign in stderr for sign in NETWORK_ERRORS):
            return UNREACHABLE, [f"audit skipped: vulnerability service unreachable; {MANUAL}"]
        return FAILED, ["pip-audit failed:", *stderr.strip().splitlines()[-20:]]
    found = [
        f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {_fixes(vuln)})"
        for dep in dependencies
        for vuln in dep.get("vulns", [])
    ]
    if found:
        return FAILED, [f"{len(found)} known vulnerabilities in requirements.lock:", *found]
    # A 404 from the service is a skip, not an error: every locked package is on the index,
    # so a skip means the service did not answer for it.
    skipped = sum("skip_reason" in dep for dep in dependencies)
    if skipped:
        return UNREACHABLE, [
            f"audit skipped for {skipped} of {len(dependencies)} locked packages: the "
            f"vulnerability service did not answer for them; {MANUAL}"
        ]
    if returncode:
        return FAILED, [f"pip-audit exited {returncode}:", *stderr.strip().splitlines()[-20:]]
    return CLEAN, [f"no known vulnerabilities in {len(dependencies)} locked packages"]


def _fixes(vuln: dict[str, list[str]]) -> str:
    return ", ".join(vuln.get("fix_versions", [])) or "no release yet"


def audit() -> tuple[int, list[str]]:
    """Runs pip-audit on the lock; hashed exact pins need neither pip nor a resolver."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "pip_audit", "--requirement", str(LOCK), "--disable-pip",
            "--format", "json", "--output", str(report), "--progress-spinner", "off",
            "--timeout", str(REQUEST_TIMEOUT),
        ]  # fmt: skip
        try:
            # S603: a fixed argv of this interpreter and pip-audit, no shell, no outside input.
            run = subprocess.run(  # noqa: S603
                command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            return UNREACHABLE, [f"audit skipped: no answer in {RUN_TIMEOUT}s; {MANUAL}"]
        text = report.read_text(encoding="utf-8") if report.exists() else ""
        return verdict(run.returncode, text, run.stderr)


def main() -> int:
    """Prints the audit's outcome and returns its exit status."""
    status, lines = audit()
    for line in lines:
        print(f"audit: {line}", file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
