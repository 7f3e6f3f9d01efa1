"""alertmanager.yml passes amtool, renders from the environment, routes and inhibits as intended.

Routing is proven with `amtool config routes test --verify.receivers`; inhibition with a real
Alertmanager on loopback, since amtool cannot evaluate inhibit rules.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.monitoring.tools import (
    ALERTMANAGER_DIR,
    alerting_rules,
    load_yaml,
    require_tool,
    run,
)
from tests.support.ports import free_port

CONFIG = ALERTMANAGER_DIR / "alertmanager.yml"
RENDER = ALERTMANAGER_DIR / "render.sh"
PLACEHOLDER = re.compile(r"^[^#]*\$\{\w+\}", re.MULTILINE)
# Every character YAML or a shell could trip over: the value must arrive unchanged.
NASTY_PASSWORD = 'p"a\\s&s#: x ${HOME} $1'
ENV = {
    "ALERT_SMTP_HOST": "smtp.example.com",
    "ALERT_SMTP_PORT": "587",
    "ALERT_SMTP_FROM": "Tocsin Alertmanager <alerts@example.com>",
    "ALERT_SMTP_USERNAME": "alerts@example.com",
    "ALERT_SMTP_PASSWORD": NASTY_PASSWORD,
    "ALERT_EMAIL_WARNING": "ops@example.com",
    "ALERT_EMAIL_CRITICAL": "oncall@example.com",
    # A token holding YAML's and the shell's special characters, like the password.
    "WECOM_RELAY_TOKEN": 'tok"en\\#: &amp;-0123456789',
}


@pytest.fixture(scope="module")
def amtool() -> str:
    return require_tool("amtool")


def _render(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return run("sh", RENDER, CONFIG, tmp_path / "alertmanager.yml", env={**base, **env})


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    result = _render(tmp_path, **ENV)
    assert result.returncode == 0, result.stderr
    return tmp_path / "alertmanager.yml"


def _check_config(amtool: str, path: Path) -> None:
    result = run(amtool, "check-config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_config_is_valid_as_written(amtool: str) -> None:
    _check_config(amtool, CONFIG)


def test_rendered_config_is_valid(amtool: str, rendered: Path) -> None:
    _check_config(amtool, rendered)


def test_render_fills_every_placeholder_from_the_environment(rendered: Path) -> None:
    text = rendered.read_text(encoding="utf-8")
    # ${HOME} inside the password is data, not a placeholder: it must stay as it is.
    assert not PLACEHOLDER.search(text.replace(NASTY_PASSWORD, ""))
    config = yaml.safe_load(text)
    assert config["global"]["smtp_smarthost"] == "smtp.example.com:587"
    assert config["global"]["smtp_auth_password"] == NASTY_PASSWORD
    assert config["global"]["smtp_require_tls"] is True
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["email-critical"]["email_configs"][0]["to"] == "oncall@example.com"
    (webhook,) = receivers["wecom-oncall"]["webhook_configs"]
    # The relay picks the robot by route and holds its key; Alertmanager holds only the token.
    assert webhook["url"] == "http://wecom-robot-relay:8080/alertmanager/oncall"
    assert webhook["http_config"] == {"authorization": {"credentials": ENV["WECOM_RELAY_TOKEN"]}}
    assert "key=" not in text
    # It holds the SMTP password and the relay token.
    assert rendered.stat().st_mode & 0o077 == 0


def test_render_turns_tls_off_only_when_asked(tmp_path: Path) -> None:
    assert _render(tmp_path, **ENV, ALERT_SMTP_REQUIRE_TLS="false").returncode == 0
    config = load_yaml(tmp_path / "alertmanager.yml")
    assert config["global"]["smtp_require_tls"] is False
    refused = _render(tmp_path, **ENV, ALERT_SMTP_REQUIRE_TLS="no")
    assert refused.returncode != 0
    assert "ALERT_SMTP_REQUIRE_TLS" in refused.stderr


def test_render_refuses_an_unset_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "ALERT_EMAIL_CRITICAL"}
    result = _render(tmp_path, **env)
    assert result.returncode != 0
    assert "ALERT_EMAIL_CRITICAL is not set" in result.stderr
    assert not (tmp_path / "alertmanager.yml").exists()
    assert not list(tmp_path.iterdir()), "render.sh left a partial file behind"


def test_render_runs_the_command_it_is_given(tmp_path: Path) -> None:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out = tmp_path / "alertmanager.yml"
    result = run("sh", RENDER, CONFIG, out, "cat", out, env={**base, **ENV})
    assert result.returncode == 0, result.stderr
    assert "smtp.example.com:587" in result.stdout


# labels of an alert -> the receivers it reaches, in routing-tree order
ROUTES = [
    pytest.param(
        {"alertname": "TocsinChannelNoSuccess", "severity": "critical", "channel": "wecom"},
        ["wecom-oncall", "email-critical"],
        id="critical-continues-to-email-not-to-root",
    ),
    pytest.param(
        {"alertname": "TocsinChannelNoSuccess", "severity": "critical", "channel": "email"},
        ["wecom-oncall", "email-critical"],
        id="critical-email-channel-is-not-also-a-warning-route",
    ),
    pytest.param(
        {"alertname": "TocsinNoWorkerUp", "severity": "critical", "job": "tocsin-worker"},
        ["wecom-oncall", "email-critical"],
        id="critical-without-channel",
    ),
    pytest.param(
        {"alertname": "TocsinChannelFailureRatioHigh", "severity": "warning", "channel": "email"},
        ["wecom-oncall"],
        id="email-channel-warning-avoids-smtp",
    ),
    pytest.param(
        {"alertname": "TocsinChannelFailureRatioHigh", "severity": "warning", "channel": "wecom"},
        ["email-warning"],
        id="wecom-channel-warning-by-email",
    ),
    pytest.param(
        {"alertname": "TocsinBacklogHigh", "severity": "warning", "channel": "system"},
        ["email-warning"],
        id="system-channel-warning",
    ),
    pytest.param(
        {"alertname": "TocsinTargetDown", "severity": "warning", "job": "tocsin-producer"},
        ["email-warning"],
        id="warning-without-channel-falls-to-root",
    ),
    pytest.param({"alertname": "Unknown"}, ["email-warning"], id="no-severity-falls-to-root"),
]


@pytest.mark.parametrize(("labels", "receivers"), ROUTES)
def test_route(amtool: str, labels: dict[str, str], receivers: list[str]) -> None:
    result = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        f"--verify.receivers={','.join(receivers)}",
        *(f"{name}={value}" for name, value in labels.items()),
    )
    assert result.returncode == 0, f"{labels} reached {result.stdout.strip()}, not {receivers}"


def test_every_receiver_is_routed_to_and_none_is_tocsin() -> None:
    config = load_yaml(CONFIG)
    routed = {config["route"]["receiver"]} | {r["receiver"] for r in config["route"]["routes"]}
    assert routed == {r["name"] for r in config["receivers"]}
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            host = httpx.URL(webhook["url"]).host
            # Alerts about Tocsin must not depend on Tocsin: no Tocsin process receives them.
            assert host not in {"producer", "worker", "localhost", "127.0.0.1"}, webhook["url"]


def test_routes_know_every_severity_the_rules_use() -> None:
    severities = {rule["labels"]["severity"] for rule in alerting_rules()}
    assert severities == {"warning", "critical"}
    routed = {
        matcher.partition("=")[2].strip('"')
        for route in load_yaml(CONFIG)["route"]["routes"]
        for matcher in route["matchers"]
        if matcher.startswith("severity=")
    }
    assert routed == severities


# --- inhibition, on a real Alertmanager --------------------------------------------------


class Alertmanager:
    """A running Alertmanager on loopback, with helpers to post and read alerts."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=5)

    def post(self, *alerts: dict[str, str]) -> None:
        body = [{"labels": labels, "annotations": {"summary": "test"}} for labels in alerts]
        self.client.post("/api/v2/alerts", json=body).raise_for_status()

    def states(self, count: int) -> dict[str, str]:
        """alertname/severity/channel/job -> "active" or "suppressed", once all count are in."""
        deadline = time.monotonic() + 10
        while True:
            alerts = self.client.get("/api/v2/alerts").raise_for_status().json()
            if len(alerts) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # The inhibitor learns about alerts asynchronously: let its view settle.
        time.sleep(0.5)
        alerts = self.client.get("/api/v2/alerts").raise_for_status().json()
        return {_key(alert["labels"]): alert["status"]["state"] for alert in alerts}


def _key(labels: dict[str, Any]) -> str:
    return "/".join(labels.get(name, "-") for name in ("alertname", "severity", "channel", "job"))


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    binary = require_tool("prometheus-alertmanager", "alertmanager")
    # Mail to a closed loopback port: nothing leaves the machine if a group flushes.
    env = {**ENV, "ALERT_SMTP_HOST": "127.0.0.1", "ALERT_SMTP_PORT": str(free_port())}
    assert _render(tmp_path, **env).returncode == 0
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        manager = Alertmanager(url)
        yield manager
        manager.client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, "alertmanager exited at start-up"
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("alertmanager did not become ready in 15 s")


def test_critical_mutes_warnings_of_the_same_channel_only(alertmanager: Alertmanager) -> None:
    alertmanager.post(
        {"alertname": "TocsinChannelNoSuccess", "severity": "critical", "channel": "wecom"},
        {"alertname": "TocsinChannelFailureRatioHigh", "severity": "warning", "channel": "wecom"},
        {"alertname": "TocsinOldestDueAgeHigh", "severity": "warning", "channel": "wecom"},
        {"alertname": "TocsinChannelFailureRatioHigh", "severity": "warning", "channel": "email"},
        # A critical alert without a channel mutes no channel-less warning.
        {"alertname": "TocsinProducerNotSuccessful", "severity": "critical"},
        {"alertname": "TocsinTargetDown", "severity": "warning", "job": "tocsin-producer"},
    )
    assert alertmanager.states(6) == {
        "TocsinChannelNoSuccess/critical/wecom/-": "active",
        "TocsinChannelFailureRatioHigh/warning/wecom/-": "suppressed",
        "TocsinOldestDueAgeHigh/warning/wecom/-": "suppressed",
        "TocsinChannelFailureRatioHigh/warning/email/-": "active",
        "TocsinProducerNotSuccessful/critical/-/-": "active",
        "TocsinTargetDown/warning/-/tocsin-producer": "active",
    }


def test_no_worker_up_mutes_backlog_and_no_success(alertmanager: Alertmanager) -> None:
    alertmanager.post(
        {"alertname": "TocsinNoWorkerUp", "severity": "critical", "job": "tocsin-worker"},
        {"alertname": "TocsinBacklogHigh", "severity": "warning", "channel": "email"},
        {"alertname": "TocsinOldestDueAgeHigh", "severity": "critical", "channel": "email"},
        {"alertname": "TocsinChannelNoSuccess", "severity": "critical", "channel": "wecom"},
        {"alertname": "TocsinTargetDown", "severity": "warning", "job": "tocsin-worker"},
        # Not a consequence of missing workers: these stay.
        {"alertname": "TocsinTargetDown", "severity": "warning", "job": "tocsin-producer"},
        {"alertname": "TocsinDeadLettersGrowing", "severity": "warning", "channel": "system"},
    )
    assert alertmanager.states(7) == {
        "TocsinNoWorkerUp/critical/-/tocsin-worker": "active",
        "TocsinBacklogHigh/warning/email/-": "suppressed",
        "TocsinOldestDueAgeHigh/critical/email/-": "suppressed",
        "TocsinChannelNoSuccess/critical/wecom/-": "suppressed",
        "TocsinTargetDown/warning/-/tocsin-worker": "suppressed",
        "TocsinTargetDown/warning/-/tocsin-producer": "active",
        "TocsinDeadLettersGrowing/warning/system/-": "active",
    }


def test_inhibition_rules_name_real_alerts() -> None:
    alerts = {rule["alert"] for rule in alerting_rules()}
    for rule in load_yaml(CONFIG)["inhibit_rules"]:
        for matcher in (*rule["source_matchers"], *rule["target_matchers"]):
            name, _, value = matcher.partition("=")
            if name == "alertname":
                names = set(value.lstrip("~").strip('"').split("|"))
                assert names <= alerts, f"inhibit rule names unknown alerts {names - alerts}"
