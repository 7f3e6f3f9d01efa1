"""A live run: `tocsin run` with e-mail failing, scraped by a real Prometheus that alerts a real
Alertmanager, proves that every dashboard query returns data and that the failure alerts go
pending, fire, reach a receiver and resolve once e-mail recovers.

Prometheus loads the shipped rules with every `for:` and range window shortened (minutes become
seconds), so the run takes about a minute; the shipped durations and thresholds are proven by
the promtool unit tests in monitoring/prometheus/tests.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from tests.integration.cli import Cli, Server, base_env, record_alert
from tests.monitoring.test_dashboards import SUBSTITUTIONS, _queries
from tests.monitoring.tools import (
    ALERTMANAGER_DIR,
    PROMETHEUS_DIR,
    RULE_FILES,
    alerting_rules,
    load_yaml,
    require_tool,
)
from tests.support.ports import free_port
from tests.support.smtp_server import SmtpSink
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# `for: 10m` becomes 10s and `[5m]` becomes [15s]: fifteen 1 s scrapes, plenty for rate().
FOR_SCALE = 60
RANGE_SCALE = 20
WORKER_JOB = "tocsin-worker"
# Grafana's variables for one channel, with Grafana's $__rate_interval for a 1 s scrape.
GRAFANA = {**SUBSTITUTIONS, "$__rate_interval": "30s", "$__range": "5m", "$channel": "email"}
FAILURE_ALERTS = {"TocsinChannelNoSuccess": "critical", "TocsinChannelFailureRatioHigh": "warning"}
# Enough 1 s retries to keep a notification failing for the whole failing phase.
RETRY_SCHEDULE = ",".join(["1s"] * 60)
# Users and their channels: u1 and u2 receive e-mail; quiet has opted out of it.
USERS = {"u1": "system,email", "u2": "system,email", "quiet": "system"}

_DURATION = re.compile(r"(\d+)(ms|[smhdwy])")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_RANGE = re.compile(r"\[((?:\d+(?:ms|[smhdwy]))+)\]")


def _seconds(duration: str) -> float:
    parts = _DURATION.findall(duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _shortened(duration: str, scale: int) -> str:
    return f"{max(1, round(_seconds(duration) / scale))}s"


def shortened_rules(path: Path) -> dict[str, Any]:
    """The rule file at path with every `for:` and range window divided down to seconds."""
    document: dict[str, Any] = load_yaml(path)
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = _shortened(rule["for"], FOR_SCALE)
            rule["expr"] = _RANGE.sub(
                lambda match: f"[{_shortened(match.group(1), RANGE_SCALE)}]", rule["expr"]
            )
    return document


def prometheus_config(target: str, alertmanager: str, rule_files: list[Path]) -> dict[str, Any]:
    """Scrapes target every second as the shipped worker job and alerts to alertmanager."""
    shipped = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    # `tocsin run` is producer and worker at once: the shipped config lists it as a worker only.
    assert WORKER_JOB in {job["job_name"] for job in shipped["scrape_configs"]}
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": WORKER_JOB, "static_configs": [{"targets": [target]}]}],
    }


def alertmanager_config(webhook: str) -> dict[str, Any]:
    """Routes every alert, grouped as the shipped config groups them, to one webhook."""
    shipped = load_yaml(ALERTMANAGER_DIR / "alertmanager.yml")
    return {
        "route": {
            "receiver": "webhook",
            "group_by": shipped["route"]["group_by"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1s",
        },
        "receivers": [
            {"name": "webhook", "webhook_configs": [{"url": webhook, "send_resolved": True}]}
        ],
    }


def test_shortened_rules_keep_every_rule_and_shorten_every_window() -> None:
    shortened = [
        rule
        for path in RULE_FILES
        for group in shortened_rules(path)["groups"]
        for rule in group["rules"]
    ]
    assert [r.get("alert") for r in shortened if "alert" in r] == [
        r["alert"] for r in alerting_rules()
    ]
    for rule in shortened:
        assert _seconds(rule.get("for", "0s")) <= 10, rule
        for window in _RANGE.findall(rule["expr"]):
            assert _seconds(window) <= 6 * 60, rule["expr"]
    windows = {w for rule in shortened for w in _RANGE.findall(rule["expr"])}
    assert "15s" in windows, "the 5m rate windows were not shortened"


# --- the processes ------------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """Records what Alertmanager posts, on a free loopback port in the test's loop."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def _receive(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.Response()

    def received(self, alertname: str, status: str) -> list[dict[str, str]]:
        """Labels of every e-mail alert named alertname that arrived with status."""
        return [
            alert["labels"]
            for notification in self.notifications
            for alert in notification["alerts"]
            if alert["status"] == status
            and alert["labels"].get("alertname") == alertname
            and alert["labels"].get("channel") == "email"
        ]

    @classmethod
    @asynccontextmanager
    async def serve(cls) -> AsyncIterator[WebhookReceiver]:
        receiver = cls()
        app = web.Application()
        app.router.add_post("/alerts", receiver._receive)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/alerts"
        try:
            yield receiver
        finally:
            await runner.cleanup()


@dataclass
class Daemon:
    """A Prometheus or Alertmanager on loopback, its output kept in a log file."""

    process: asyncio.subprocess.Process
    url: str
    log: Path

    def tail(self) -> str:
        """The end of the daemon's output, for failure messages."""
        return self.log.read_text(errors="replace")[-3000:]

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        """Waits until /-/ready answers 200, failing at once if the process exits."""

        async def ready() -> bool:
            assert self.process.returncode is None, f"{self.log.name} exited:\n{self.tail()}"
            try:
                return (await client.get(f"{self.url}/-/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, timeout=90)

    async def stop(self) -> None:
        """Terminates the process, killing it if it overstays."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@asynccontextmanager
async def daemon(
    binary: str, *args: str, port: int, log: Path, client: httpx.AsyncClient
) -> AsyncIterator[Daemon]:
    """Runs binary with args until the block ends; yields it once it reports ready."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            binary,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    running = Daemon(process, f"http://127.0.0.1:{port}", log)
    try:
        await running.wait_ready(client)
        yield running
    finally:
        await running.stop()


def _write_yaml(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def alertmanager(home: Path, webhook: str, client: httpx.AsyncClient) -> Any:
    """A real Alertmanager sending every notification to webhook."""
    binary = require_tool("prometheus-alertmanager", "alertmanager")
    config = _write_yaml(home / "alertmanager.yml", alertmanager_config(webhook))
    port = free_port()
    return daemon(
        binary,
        f"--config.file={config}",
        f"--storage.path={home / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        port=port,
        log=home / "alertmanager.log",
        client=client,
    )


def prometheus(home: Path, target: str, alertmanager_url: str, client: httpx.AsyncClient) -> Any:
    """A real Prometheus scraping target with the shortened rules, alerting alertmanager_url."""
    binary = require_tool("prometheus")
    rule_files = [
        _write_yaml(home / f"short-{path.name}", shortened_rules(path)) for path in RULE_FILES
    ]
    manager = httpx.URL(alertmanager_url)
    config = prometheus_config(target, f"{manager.host}:{manager.port}", rule_files)
    port = free_port()
    return daemon(
        binary,
        f"--config.file={_write_yaml(home / 'prometheus.yml', config)}",
        f"--storage.tsdb.path={home / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        port=port,
        log=home / "prometheus.log",
        client=client,
    )


# --- Prometheus's HTTP API ----------------------------------------------------------------


@dataclass
class Api:
    """Queries one Prometheus and remembers the states each e-mail alert went through."""

    client: httpx.AsyncClient
    url: str
    states: dict[str, list[str]] = field(default_factory=dict)

    async def _get(self, path: str, **params: str) -> Any:
        body = (await self.client.get(f"{self.url}{path}", params=params)).json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector expr evaluates to now."""
        result: list[dict[str, Any]] = (await self._get("/api/v1/query", query=expr))["result"]
        return result

    async def query_range(self, expr: str, start: float) -> list[dict[str, Any]]:
        """The series expr yields from start to now at 1 s steps, as a Grafana panel shows it."""
        data = await self._get(
            "/api/v1/query_range", query=expr, start=str(start), end=str(time.time()), step="1s"
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    async def watch_alerts(self) -> None:
        """Appends each e-mail alert's state (pending, firing) to states when it changes."""
        for alert in (await self._get("/api/v1/alerts"))["alerts"]:
            labels = alert["labels"]
            if labels.get("channel") != "email":
                continue
            seen = self.states.setdefault(labels["alertname"], [])
            if not seen or seen[-1] != alert["state"]:
                seen.append(alert["state"])


async def until(check: Callable[[], Awaitable[Any]], api: Api, timeout: float) -> Any:
    """Awaits check() like eventually(), watching the alert states at every step."""

    async def step() -> Any:
        await api.watch_alerts()
        return await check()

    return await eventually(step, timeout=timeout, interval=0.25)


# --- the test -----------------------------------------------------------------------------


def email_env(sink: SmtpSink) -> dict[str, str]:
    """E-mail through the sink, failures retried every second."""
    return {
        "EMAIL_ENABLED": "true",
        "EMAIL_SMTP_SERVER": sink.host,
        "EMAIL_SMTP_PORT": str(sink.port),
        "EMAIL_SECURITY": "none",
        "EMAIL_FROM": "Tocsin Alerts <alerts@tocsin.test>",
        "SEND_TIMEOUT": "10s",
        "RETRY_SCHEDULE": RETRY_SCHEDULE,
    }


async def seed(cli: Cli) -> None:
    """Migrates, adds the users, and records the alert the start-up producer pass expands."""
    await cli.ok("db", "upgrade")
    await asyncio.gather(
        *(
            cli.ok("users", "upsert", name, "--email", f"{name}@example.com", "--channels", chans)
            for name, chans in USERS.items()
        )
    )
    # Around the CLI, which would expand it at once: the start-up pass is to do it.
    record_alert(cli.cwd, "Disk full", "u1", "u2")


async def next_producer_minute() -> float:
    """The Unix time of the cron producer pass this test waits for (the next minute, UTC).

    Start-up, the alert it must expand and Prometheus's first scrape take a few seconds: too
    close to the minute, the pass would come before them, so wait for the next minute instead.
    """
    now = time.time()
    if now % 60 > 45:
        await asyncio.sleep(60 - now % 60 + 0.5)
        now = time.time()
    return now - now % 60 + 60


@dataclass
class Timings:
    """Seconds from Prometheus's start to each milestone, printed with -s."""

    start: float = field(default_factory=time.time)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.time() - self.start, 1)


async def start_tocsin(cli: Cli, tmp_path: Path, stack: AsyncExitStack) -> tuple[Server, str]:
    """Starts `tocsin run`; returns it and its scrape target once the start-up pass is done."""
    port = free_port()
    env = {
        **cli.env,
        "METRICS_PORT": str(port),
        "METRICS_ADDR": "127.0.0.1",
        "RELAY_INTERVAL": "0.2s",
        "OBSERVE_INTERVAL": "1s",
        "PRODUCER_CRON": "* * * * *",
        "LOG_FORMAT": "json",
    }
    server = await Server.start("run", env=env, cwd=tmp_path)
    stack.push_async_callback(server.kill)

    async def started() -> bool:
        assert server.running, f"tocsin run exited early:\n{server.stderr[-3000:]}"
        return '"job_run_success"' in server.stderr

    await eventually(started, timeout=90)
    return server, f"127.0.0.1:{port}"


async def fail_then_recover(api: Api, sink: SmtpSink, webhook: WebhookReceiver) -> Timings:
    """Fails e-mail until both failure alerts fire and arrive, then lets it recover."""
    timings = Timings()

    async def scraped() -> bool:
        return bool(await api.query(f'up{{job="{WORKER_JOB}"}} == 1'))

    await until(scraped, api, timeout=15)
    timings.mark("first scrape")
    # One permanent refusal, now that Prometheus has seen the dead-letter counter at 0.
    sink.respond_with(550, "5.1.1 no such user", times=1, stage="RCPT")

    def arrived(status: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return all(webhook.received(name, status) for name in FAILURE_ALERTS)

        return check

    await until(arrived("firing"), api, timeout=45)
    timings.mark("firing received")
    sink.reset()
    await until(arrived("resolved"), api, timeout=45)
    timings.mark("resolved received")
    return timings


async def panels_without_data(api: Api, start: float) -> tuple[list[str], list[str]]:
    """Panel queries that returned no series, and those whose every value is NaN."""
    empty, nan_only = [], []
    for where, expr in _queries():
        concrete = expr
        for variable, value in GRAFANA.items():
            concrete = concrete.replace(variable, value)
        assert "$" not in concrete, f"{where}: unknown Grafana variable in {concrete!r}"
        series = await api.query_range(concrete, start)
        values = [float(v) for s in series for _, v in s["values"]]
        if not series:
            empty.append(f"{where}: {concrete}")
        elif all(math.isnan(v) for v in values):
            nan_only.append(f"{where}: {concrete}")
    return empty, nan_only


async def test_failing_email_fires_resolves_and_fills_every_panel(
    tmp_path: Path, smtp_server: SmtpSink
) -> None:
    require_tool("prometheus")
    require_tool("prometheus-alertmanager", "alertmanager")
    cli = Cli(base_env(tmp_path, **email_env(smtp_server)), tmp_path)
    await seed(cli)
    # Every DATA is refused with a transient 421 until reset(): each try becomes a retry.
    smtp_server.respond_with(421, "4.3.0 try again later")
    producer_minute = await next_producer_minute()

    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        webhook = await stack.enter_async_context(WebhookReceiver.serve())
        manager = await stack.enter_async_context(alertmanager(tmp_path, webhook.url, client))
        server, target = await start_tocsin(cli, tmp_path, stack)
        # The cron pass must expand something: e-mail for u1, and for quiet an opt-out. The
        # record is written around the CLI, which would expand it at once.
        record_alert(cli.cwd, "Marker", "quiet", "u1")
        prom = await stack.enter_async_context(prometheus(tmp_path, target, manager.url, client))
        api = Api(client, prom.url)

        timings = await fail_then_recover(api, smtp_server, webhook)
        for name, severity in FAILURE_ALERTS.items():
            assert api.states.get(name, [])[:2] == ["pending", "firing"], (name, api.states)
            (firing, *_) = webhook.received(name, "firing")
            assert (firing["channel"], firing["severity"]) == ("email", severity), firing

        async def produced_again() -> bool:
            expr = "increase(tocsin_producer_alerts_processed_total[30s]) > 0"
            return bool(await api.query_range(expr, timings.start))

        await until(produced_again, api, timeout=max(producer_minute - time.time(), 0) + 15)
        timings.mark("cron producer pass")
        empty, nan_only = await panels_without_data(api, timings.start)
        timings.mark("panels checked")
        print(f"\nlive alerting timings (s since Prometheus start): {timings.marks}")
        print(f"alert states seen: {api.states}; NaN-only panels: {nan_only}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        assert not nan_only, "dashboard queries with only NaN:\n" + "\n".join(nan_only)
        code = await server.stop(timeout=30)
        assert code == 0, f"exit {code}:\n{server.stderr[-3000:]}"
