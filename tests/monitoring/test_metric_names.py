"""Metric names agree across the code, the rules, the dashboards and docs/metrics.md.

The code is the authority: the names come from the exposition of monitoring.metrics.Metrics
with every series pre-created, as /metrics serves it.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.monitoring.tools import (
    DASHBOARDS,
    PROMETHEUS_NAMES,
    ROOT,
    exposed_families,
    exposed_names,
    metric_names,
    recorded_names,
    rules,
)

DOCS = ROOT / "docs" / "metrics.md"
# A docs table row's first cell: one or more `name`s.
DOC_ROW = re.compile(r"^\|\s*(`[^|]+`)\s*\|", re.MULTILINE)


def test_metric_names_sees_through_promql_syntax() -> None:
    expr = (
        'sum by (channel, reason) (rate(a_total{channel=~"$x",reason!="b_total"}[5m])) > 0.3 '
        "and on (job) up offset 5m / ignoring (le) histogram_quantile(0.9, c_bucket) "
        'unless absent(up{job="w"} == 1) + level:d:rate5m * 1e3 or vector(0)'
    )
    assert metric_names(expr) == {"a_total", "up", "c_bucket", "level:d:rate5m"}


def _rule_metrics() -> list[tuple[str, set[str]]]:
    return [(rule.get("alert") or rule["record"], metric_names(rule["expr"])) for rule in rules()]


@pytest.mark.parametrize(("rule", "names"), _rule_metrics(), ids=[r for r, _ in _rule_metrics()])
def test_rules_name_only_catalogue_metrics(rule: str, names: set[str]) -> None:
    known = exposed_names() | recorded_names() | PROMETHEUS_NAMES
    assert names, f"{rule} selects no metric"
    assert names <= known, f"{rule} names metrics Tocsin does not expose: {names - known}"


def test_recording_rules_follow_the_naming_convention() -> None:
    for name in recorded_names():
        level, metric, operation = name.split(":")
        assert level and operation, name
        assert metric.startswith("tocsin_") and not metric.endswith("_total"), name


def _documented() -> set[str]:
    return {
        name
        for cell in DOC_ROW.findall(DOCS.read_text(encoding="utf-8"))
        for name in re.findall(r"`([a-z_:]+)`", cell)
    }


def _families() -> set[str]:
    """Tocsin's metric families as docs/metrics.md names them (without _created companions)."""
    families = exposed_families()
    return {
        name
        for name in families
        if not (
            name.endswith("_created")
            and (
                f"{name.removesuffix('_created')}_total" in families
                or name.removesuffix("_created") in families
            )
        )
    }


def test_docs_name_only_exposed_metrics() -> None:
    unknown = _documented() - _families()
    assert not unknown, f"docs/metrics.md documents metrics the code does not expose: {unknown}"


def test_docs_document_every_exposed_metric() -> None:
    missing = _families() - _documented()
    assert not missing, f"docs/metrics.md lacks a row for: {sorted(missing)}"


def test_rules_and_dashboards_use_documented_metrics() -> None:
    documented = _documented()
    histogram_samples = {
        f"{name}{suffix}" for name in documented for suffix in ("_bucket", "_sum", "_count")
    }
    used = {name for _, names in _rule_metrics() for name in names}
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                used |= metric_names(target["expr"])
    undocumented = used - documented - histogram_samples - recorded_names() - PROMETHEUS_NAMES
    assert not undocumented, f"used but not in docs/metrics.md: {sorted(undocumented)}"
