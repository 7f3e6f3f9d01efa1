"""The Prometheus config and rules pass promtool; every alert is unit-tested and documented."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.monitoring.tools import (
    PROMETHEUS_DIR,
    ROOT,
    RULE_FILES,
    RUNBOOKS,
    alerting_rules,
    load_yaml,
    require_tool,
    rules,
    run,
)

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
SEVERITIES = {"warning", "critical"}
ANNOTATIONS = {"summary", "description", "runbook_url", "dashboard_url"}
JOB_MATCHER = re.compile(r'\bjob\s*=~?\s*"([^"]+)"')


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


def _passed(result: Any) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


def test_config_is_valid(promtool: str) -> None:
    # check config also loads every rule file the config names.
    result = run(promtool, "check", "config", CONFIG)
    _passed(result)
    assert f"{len(RULE_FILES)} rule files found" in result.stdout


def test_rules_are_valid(promtool: str) -> None:
    _passed(run(promtool, "check", "rules", *RULE_FILES))


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert UNIT_TESTS, "monitoring/prometheus/tests/*.yml holds no unit test"
    # promtool resolves each test file's rule_files relative to the test file.
    _passed(run(promtool, "test", "rules", *UNIT_TESTS))


def test_unit_tests_load_every_rule_file() -> None:
    for path in UNIT_TESTS:
        loaded = {(path.parent / name).resolve() for name in load_yaml(path)["rule_files"]}
        assert loaded == {rule_file.resolve() for rule_file in RULE_FILES}, path.name


def _alert_cases() -> dict[str, dict[str, set[str]]]:
    """Alert name -> {"firing": severities seen firing, "silent": eval times it stays silent}."""
    cases: dict[str, dict[str, set[str]]] = defaultdict(lambda: {"firing": set(), "silent": set()})
    for path in UNIT_TESTS:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                seen = cases[case["alertname"]]
                expected = case.get("exp_alerts") or []
                if not expected:
                    seen["silent"].add(f"{test['name']} @ {case['eval_time']}")
                for alert in expected:
                    seen["firing"].add(alert["exp_labels"]["severity"])
    return cases


def test_every_alerting_rule_is_tested_firing_and_silent() -> None:
    cases = _alert_cases()
    for rule in alerting_rules():
        name, severity = rule["alert"], rule["labels"]["severity"]
        assert severity in cases[name]["firing"], f"no test where {name} ({severity}) fires"
        assert cases[name]["silent"], f"no test where {name} stays silent"
    unknown = set(cases) - {rule["alert"] for rule in alerting_rules()}
    assert not unknown, f"unit tests name alerts no rule defines: {unknown}"


@pytest.mark.parametrize(
    "rule", alerting_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}"
)
def test_alert_carries_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == ANNOTATIONS
    assert all(str(value).strip() for value in annotations.values())
    if "$labels.channel" in annotations["summary"]:
        # A per-channel alert opens the channel dashboard on that channel.
        assert annotations["dashboard_url"].endswith("var-channel={{ $labels.channel }}")


def _runbook_anchors() -> set[str]:
    """GitHub-style anchors of the headings in docs/runbooks.md."""
    anchors = set()
    for line in RUNBOOKS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_runbook_url_has_its_runbook() -> None:
    anchors = _runbook_anchors()
    for rule in alerting_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert Path(path) == RUNBOOKS.relative_to(ROOT), rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/runbooks.md has no section {rule['alert']}"


def test_alerts_have_distinct_names_per_severity() -> None:
    keys = [(rule["alert"], rule["labels"]["severity"]) for rule in alerting_rules()]
    assert len(keys) == len(set(keys))


def test_job_labels_name_scrape_jobs() -> None:
    jobs = {job["job_name"] for job in load_yaml(CONFIG)["scrape_configs"]}
    assert {"tocsin-producer", "tocsin-worker"} <= jobs
    for rule in rules():
        named = set(JOB_MATCHER.findall(rule["expr"]))
        named |= {rule.get("labels", {}).get("job")} - {None}
        assert named <= jobs, f"{rule.get('alert') or rule.get('record')} names {named - jobs}"


def test_config_loads_the_rules_and_points_at_alertmanager() -> None:
    config = load_yaml(CONFIG)
    assert config["rule_files"] == ["rules/*.yml"]
    targets = [
        target
        for manager in config["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    assert targets == ["alertmanager:9093"]
