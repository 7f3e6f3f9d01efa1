"""Helpers for the monitoring tests: the Prometheus tool binaries and the metric catalogue.

A missing binary skips its tests locally and fails them when `CI` is set (.ci/run installs
Debian's prometheus and prometheus-alertmanager), like the service fixtures do.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.metrics import Metrics
from tests.support.channels import pinned
from tests.support.services import in_ci

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
ALERTMANAGER_DIR = MONITORING / "alertmanager"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
# The job the producer runs under (pipeline.jobs); its scheduler_job_* series are pre-created.
PRODUCER_JOB = "send_alert_notifications"
# Series Prometheus itself makes, not the application.
PROMETHEUS_NAMES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_NUMBER = re.compile(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NOT_METRICS = frozenset(
    {
        # operators and modifiers
        *("and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"),
        *("group_left", "group_right", "atan2", "inf", "nan", "Inf", "NaN"),
        # aggregations, which may be followed by `by (...)` rather than "("
        *("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"),
        *("count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"),
    }
)


def metric_names(expr: str) -> set[str]:
    """Returns the metric names a PromQL expression selects (not functions, labels or strings)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub(r"\1", text)
    text = _OFFSET.sub("", text)
    text = _NUMBER.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _NOT_METRICS:
            continue
        names.add(match.group())
    return names


@cache
def exposition() -> str:
    """The /metrics text of a fresh catalogue with every series pre-created."""
    registry = CollectorRegistry()
    Metrics(registry).initialize(pinned().reasons(), [PRODUCER_JOB])
    return generate_latest(registry).decode()


@cache
def exposed_names() -> frozenset[str]:
    """Every sample name Tocsin exposes (counters with _total, histograms' _bucket/_sum/_count)."""
    return frozenset(
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in exposition().splitlines()
        if line and not line.startswith("#")
    )


@cache
def exposed_families() -> dict[str, str]:
    """Metric family name (as written in docs: counters with _total) to its type."""
    families = {}
    for line in exposition().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
    return families


def load_yaml(path: Path) -> Any:
    """The parsed YAML document at path."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    """Every recording and alerting rule in monitoring/prometheus/rules."""
    return [
        rule
        for path in RULE_FILES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    """The names the recording rules define."""
    return {rule["record"] for rule in rules() if "record" in rule}


def alerting_rules() -> list[dict[str, Any]]:
    """Every alerting rule (an alert name may appear once per severity)."""
    return [rule for rule in rules() if "alert" in rule]


def require_tool(*names: str) -> str:
    """Path of the first of names on PATH; skips the test without one, or fails it under CI."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"{' / '.join(names)} is not installed"
    if in_ci():
        pytest.fail(f"{message}; CI is set, so a missing tool is an error", pytrace=False)
    pytest.skip(message)


def run(*command: str | Path, cwd: Path = ROOT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Runs command and returns it finished, output captured as text (never raises on status)."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )
