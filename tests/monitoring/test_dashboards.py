"""The Grafana dashboards parse, follow the panel rules, and query valid PromQL on real metrics.

PromQL is validated by a real Prometheus (the Debian 2.42 binary in CI) through its
/api/v1/format_query endpoint, after Grafana's variables are replaced with concrete values.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.monitoring.tools import (
    DASHBOARDS,
    MONITORING,
    PROMETHEUS_NAMES,
    alerting_rules,
    exposed_names,
    exposition,
    load_yaml,
    metric_names,
    recorded_names,
    require_tool,
)
from tests.support.ports import free_port

DATASOURCE_UID = "tocsin-prometheus"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
CHANNEL_QUERY = "label_values(tocsin_delivery_attempts_total, channel)"
# Grafana's variables, as Grafana would interpolate them for one channel.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "6h",
    "$channel": "email",
}
HARD_CODED_RANGE = re.compile(r"\[\d+[smhdwy]\]")
# The issue's panel list: each must be on some dashboard (matched in panel titles).
REQUIRED_PANELS = [
    "success",
    "failure rate by reason",
    "attempt latency p50 / p95 / p99",
    "end-to-end latency p50 / p95 / p99",
    "throughput",
    "queue depth",
    "oldest due age",
    "deferred by quiet hours",
    "retries",
    "dead letters",
    "rate-limit waits",
    "producer runs",
    "producer run duration",
    "scheduled jobs",
]


def _load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return board


BOARDS = {path.stem: _load(path) for path in DASHBOARDS}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    found = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def _all_panels() -> list[tuple[str, dict[str, Any]]]:
    return [(name, panel) for name, board in BOARDS.items() for panel in _panels(board)]


def _queries() -> list[tuple[str, str]]:
    return [
        (f"{name}: {panel['title']} [{target['refId']}]", target["expr"])
        for name, panel in _all_panels()
        for target in panel["targets"]
    ]


def _concrete(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


def test_there_is_an_overview_and_a_channel_dashboard() -> None:
    assert {"tocsin-overview", "tocsin-channel"} <= set(BOARDS)
    uids = [board["uid"] for board in BOARDS.values()]
    assert len(uids) == len(set(uids))
    for name, board in BOARDS.items():
        assert board["uid"] == name, "file name and uid differ"
        assert board["title"].startswith("Tocsin / ")


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_variables(name: str) -> None:
    variables = {v["name"]: v for v in BOARDS[name]["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert datasource["current"]["value"] == DATASOURCE_UID
    channel = variables["channel"]
    assert channel["datasource"] == DATASOURCE_REF
    assert channel["definition"] == CHANNEL_QUERY
    assert channel["query"]["query"] == CHANNEL_QUERY
    assert channel["multi"] and channel["includeAll"]


def test_channel_variable_query_names_a_real_label() -> None:
    assert re.search(r'^tocsin_delivery_attempts_total\{[^}]*channel="', exposition(), re.M)


@pytest.mark.parametrize(
    ("board", "panel"), _all_panels(), ids=lambda v: v if isinstance(v, str) else v["title"]
)
def test_panel_rules(board: str, panel: dict[str, Any]) -> None:
    assert panel["title"].strip(), "no title"
    assert panel.get("description", "").strip(), "no description"
    assert panel["fieldConfig"]["defaults"].get("unit"), "no unit"
    assert panel["datasource"] == DATASOURCE_REF
    assert panel["targets"], "no query"
    exprs = []
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE_REF
        assert target["expr"].strip()
        assert not HARD_CODED_RANGE.search(target["expr"]), (
            "use $__rate_interval, not a fixed range"
        )
        exprs.append(target["expr"])
    assert any("$__rate_interval" in expr for expr in exprs), "no query uses $__rate_interval"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_layout(name: str) -> None:
    ids = [panel["id"] for panel in BOARDS[name]["panels"]]
    assert len(ids) == len(set(ids))
    for panel in BOARDS[name]["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_channel_dashboard_repeats_a_row_per_channel() -> None:
    # As the Alertmanager mixin repeats its per-integration rows: the row repeats, and every
    # panel under it filters on the row's $channel.
    panels = BOARDS["tocsin-channel"]["panels"]
    rows = [panel for panel in panels if panel["type"] == "row"]
    assert [row.get("repeat") for row in rows] == ["channel"]
    assert rows[0]["title"] == "$channel"
    assert panels[0] is rows[0], "panels above the repeated row would not repeat"
    for panel in panels[1:]:
        for target in panel["targets"]:
            assert 'channel=~"$channel"' in target["expr"], panel["title"]


def test_the_issue_panels_are_all_there() -> None:
    titles = [panel["title"].lower() for _, panel in _all_panels()]
    missing = [wanted for wanted in REQUIRED_PANELS if not any(wanted in t for t in titles)]
    assert not missing


@pytest.mark.parametrize(("where", "expr"), _queries(), ids=[where for where, _ in _queries()])
def test_queries_name_only_catalogue_metrics(where: str, expr: str) -> None:
    known = exposed_names() | recorded_names() | PROMETHEUS_NAMES
    names = metric_names(_concrete(expr))
    assert names, f"{where} selects no metric"
    assert names <= known, f"{where} names metrics Tocsin does not expose: {names - known}"


@pytest.fixture(scope="session")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on a free loopback port, with nothing to scrape."""
    binary = require_tool("prometheus")
    home = tmp_path_factory.mktemp("prometheus")
    (home / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "prometheus exited at start-up"
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_format_query_rejects_invalid_promql(prometheus_url: str) -> None:
    # The check below is only worth something if the endpoint refuses bad PromQL.
    response = httpx.get(
        f"{prometheus_url}/api/v1/format_query", params={"query": "sum(rate(x[1m]"}
    )
    assert response.status_code == 400
    assert response.json()["errorType"] == "bad_data"


@pytest.mark.parametrize(("where", "expr"), _queries(), ids=[where for where, _ in _queries()])
def test_queries_are_valid_promql(prometheus_url: str, where: str, expr: str) -> None:
    response = httpx.get(f"{prometheus_url}/api/v1/format_query", params={"query": _concrete(expr)})
    body = response.json()
    assert body["status"] == "success", f"{where}: {body.get('error')}"


def test_alert_dashboard_urls_open_existing_dashboards() -> None:
    for rule in alerting_rules():
        url = httpx.URL(rule["annotations"]["dashboard_url"].replace("{{ $labels.channel }}", "x"))
        uid = url.path.removeprefix("/d/").split("/")[0]
        assert uid in BOARDS, f"{rule['alert']}: no dashboard {uid}"
        variables = {v["name"] for v in BOARDS[uid]["templating"]["list"]}
        for param in url.params:
            assert param.removeprefix("var-") in variables, f"{rule['alert']}: {param}"


def test_provisioning_matches_the_dashboards() -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert (source["uid"], source["type"]) == (DATASOURCE_UID, "prometheus")
    (provider,) = load_yaml(provisioning / "dashboards" / "tocsin.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
