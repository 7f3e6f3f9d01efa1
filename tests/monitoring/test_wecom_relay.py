"""The Alertmanager -> WeCom robot relay, against the loopback WeCom robot (no mocks).

The relay runs in-process on a real loopback port (and, for the entry points, as its own
process), posting to tests.support.wecom_server.WeComRobot, which checks msgtype and the
4096-byte markdown limit and answers with WeCom's errcodes. Requests carry the relay's bearer
token and name a route; the robot keys live only in the relay's Config.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from monitoring.alertmanager import wecom_relay
from monitoring.alertmanager.wecom_relay import (
    MAX_CONTENT_BYTES,
    Config,
    create_app,
    escape,
    mask,
    parse_listen,
    parse_robots,
    render,
    runner,
    settings,
    truncate,
    utf8_size,
)
from tests.support.listeners import listening_sockets
from tests.support.ports import free_port
from tests.support.secrets import assert_no_secret
from tests.support.waiting import eventually
from tests.support.wecom_server import SEND_PATH, WeComRobot

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "monitoring" / "alertmanager" / "wecom_relay.py"
# Shaped like a real robot key: long enough that finding it in a log is no accident.
KEY = "693a91f6-7b1c-4bc4-97a0-0ec2f1fa5aaa"
OTHER_KEY = "0d5e7c11-aaaa-4bbb-8ccc-9dddeeeff000"
TOKEN = "Xq3-relay-token-7f0e9c2b1a6d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# oncall posts to the robot the fake server knows; stale to a key it does not (93000).
ROBOTS = {"oncall": KEY, "stale": OTHER_KEY}
TOCSIN_PACKAGES = ("pipeline", "workers", "channels", "migrations", "tests")
# The tests' own HTTP client logs the URLs it requests, key included: not the relay's output.
CLIENT_LOGGERS = ("httpx", "httpcore")


def _alert(
    alertname: str = "TocsinChannelNoSuccess",
    channel: str | None = "wecom",
    severity: str = "critical",
    status: str = "firing",
    description: str | None = None,
    **labels: str,
) -> dict[str, Any]:
    slug = alertname.lower()
    all_labels = {"alertname": alertname, "severity": severity, "job": "tocsin-worker", **labels}
    if channel is not None:
        all_labels["channel"] = channel
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {
            "summary": f"{channel}: every delivery attempt fails",
            "description": description
            or (
                f"The {channel} channel has failed every delivery attempt for\n10 minutes, "
                f"with no success at all."
            ),
            "runbook_url": f"https://tocsin.example.com/docs/runbooks.md#{slug}",
            "dashboard_url": f"http://localhost:3001/d/tocsin-channel?var-channel={channel}",
        },
        "startsAt": "2024-05-01T10:00:00.123456789Z",
        "endsAt": "2024-05-01T10:42:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://localhost:9091/graph?g0.expr=channel%3Atocsin&g0.tab=1",
        "fingerprint": "c5b1d2e3f4a5b6c7",
    }


def notification(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    """An Alertmanager webhook body (version 4), as the wecom-oncall receiver posts it."""
    first = alerts[0]["labels"]
    group = {k: first[k] for k in ("alertname", "channel", "job") if k in first}
    common = {k: v for k, v in first.items() if all(a["labels"].get(k) == v for a in alerts)}
    derived = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": '{}/{severity="critical"}:{alertname="TocsinChannelNoSuccess"}',
        "truncatedAlerts": 0,
        "status": status or derived,
        "receiver": "wecom-oncall",
        "groupLabels": group,
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://localhost:9093",
        "alerts": list(alerts),
    }


def _content(robot: WeComRobot, key: str = KEY, index: int = -1) -> str:
    body = robot.received[key][index]
    assert body["msgtype"] == "markdown"
    content: str = body["markdown"]["content"]
    assert utf8_size(content) <= MAX_CONTENT_BYTES
    return content


@pytest.fixture
async def robot() -> AsyncIterator[WeComRobot]:
    async with WeComRobot(keys=(KEY,)) as server:
        yield server


def relay_log(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured log line except the test client's own."""
    return "\n".join(
        caplog.handler.format(record)
        for record in caplog.records
        if record.name.split(".")[0] not in CLIENT_LOGGERS
    )


def _app(base_url: str, timeout: float = 10.0) -> web.Application:
    return create_app(Config(TOKEN, ROBOTS, base_url=base_url, timeout=timeout))


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    app_runner = runner(app)
    await app_runner.setup()
    await web.TCPSite(app_runner, "127.0.0.1", 0).start()
    port = app_runner.addresses[0][1]
    return app_runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def relay(
    robot: WeComRobot, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the relay, which posts to the loopback robot."""
    caplog.set_level(logging.DEBUG)
    app_runner, url = await _serve(_app(robot.base_url + SEND_PATH, timeout=0.5))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5.0, headers=AUTH) as client:
            yield client
    finally:
        await app_runner.cleanup()


async def _post(
    client: httpx.AsyncClient,
    payload: Any,
    route: str = "oncall",
    raw: bytes | None = None,
    **headers: str,
) -> httpx.Response:
    content = raw if raw is not None else httpx.Request("POST", "/", json=payload).content
    response = await client.post(
        f"/alertmanager/{route}",
        content=content,
        headers={"Content-Type": "application/json", **headers},
    )
    assert_no_secret(response.text, KEY, OTHER_KEY, TOKEN)
    return response


# --- the message -------------------------------------------------------------------------


async def test_firing_notification_reaches_the_robot_as_markdown(
    relay: httpx.AsyncClient, robot: WeComRobot
) -> None:
    response = await _post(relay, notification(_alert(), _alert(instance="worker-2:9464")))

    assert response.status_code == 200
    assert response.json() == {"status": "sent", "errcode": 0}
    assert len(robot.received[KEY]) == 1  # one message for the whole group
    content = _content(robot)
    heading = content.splitlines()[0]
    assert heading.startswith("## ")
    assert "FIRING:2" in heading
    assert "TocsinChannelNoSuccess" in heading and "wecom" in heading
    assert '<font color="warning">critical</font>' in content
    assert "wecom: every delivery attempt fails" in content
    # The description's line breaks are folded: a markdown quote is one line.
    assert "> The wecom channel has failed every delivery attempt for 10 minutes" in content
    assert (
        "[Runbook](https://tocsin.example.com/docs/runbooks.md#tocsinchannelnosuccess)" in content
    )
    assert "[Dashboard](http://localhost:3001/d/tocsin-channel?var-channel=wecom)" in content
    assert "[Alertmanager](http://localhost:9093)" in content
    assert "instance=worker-2:9464" in content
    assert "2024-05-01 10:00:00 UTC" in content


async def test_resolved_notification_is_marked_resolved(
    relay: httpx.AsyncClient, robot: WeComRobot
) -> None:
    payload = notification(_alert(status="resolved", channel="email"))

    response = await _post(relay, payload)

    assert response.status_code == 200
    content = _content(robot)
    heading = content.splitlines()[0]
    assert '<font color="info">[RESOLVED:1]</font>' in heading
    assert "TocsinChannelNoSuccess" in heading and "email" in heading
    assert '<font color="info">critical · resolved</font>' in content
    assert "email: every delivery attempt fails" in content
    assert "Resolved: 2024-05-01 10:42:00 UTC" in content
    assert "[Dashboard](http://localhost:3001/d/tocsin-channel?var-channel=email)" in content


def test_severity_colours_and_mixed_groups() -> None:
    warning = _alert("TocsinChannelFailureRatioHigh", channel="email", severity="warning")
    resolved = _alert("TocsinChannelFailureRatioHigh", channel="email", status="resolved")
    content = render(notification(resolved, warning))

    assert '<font color="comment">[FIRING:1]</font>' in content.splitlines()[0]
    assert '<font color="comment">warning</font>' in content
    assert '<font color="info">critical · resolved</font>' in content
    # Firing alerts come first.
    assert content.index("warning</font>") < content.index("resolved</font>")


def test_alert_without_channel_and_relative_runbook() -> None:
    alert = _alert("TocsinNoWorkerUp", channel=None)
    alert["annotations"]["runbook_url"] = "docs/runbooks.md#tocsinnoworkerup"
    content = render(notification(alert))

    assert content.splitlines()[0].endswith("TocsinNoWorkerUp")
    # A relative link opens nowhere from a chat: it is shown as text.
    assert "Runbook: docs/runbooks.md\\#tocsinnoworkerup" in content


async def test_huge_cjk_description_is_cut_within_the_limit(
    relay: httpx.AsyncClient, robot: WeComRobot
) -> None:
    description = "渠道持续发送失败，请检查企业微信机器人配置。" * 400  # ~26 kB of UTF-8
    payload = notification(_alert(description=description))

    response = await _post(relay, payload)

    # The robot's own check (45002 above 4096 bytes) passed.
    assert response.status_code == 200
    content = _content(robot)
    assert "…" in content
    assert "渠道持续发送失败" in content
    # The links after the description survive the cut.
    assert "[Dashboard](http://localhost:3001/d/tocsin-channel?var-channel=wecom)" in content
    assert "\ufffd" not in content


async def test_many_long_alerts_are_cut_within_the_limit(
    relay: httpx.AsyncClient, robot: WeComRobot
) -> None:
    alerts = [_alert(description="告警" * 2000, instance=f"worker-{i}:9464") for i in range(20)]
    payload = notification(*alerts)
    payload["truncatedAlerts"] = 5

    response = await _post(relay, payload)

    assert response.status_code == 200
    content = _content(robot)
    assert "more alert(s) not shown" in content
    assert "[Alertmanager](http://localhost:9093)" in content
    assert content.splitlines()[0].startswith('## <font color="warning">[FIRING:20]')


INJECTIONS = {
    "mention": "<@all>",
    "link": "[x](http://evil.example)",
    "font": '<font color="warning">fake</font>',
    "emphasis": "**bold** _it_ ~~gone~~",
    "code": "`code`",
    "heading": "## FIRING:99",
    "table": "a | b",
    "entity": "&lt;@all&gt;",
}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("<@all>", "&lt;@all&gt;"),
        ("[x](http://evil)", r"\[x\]\(http://evil\)"),
        ('<font color="info">x</font>', '&lt;font color="info"&gt;x&lt;/font&gt;'),
        ("&lt;", "&amp;lt;"),
        (r"a\*b*_c_`d`#e~f|g", r"a\\\*b\*\_c\_\`d\`\#e\~f\|g"),
        ("plain text, 中文 ok: 1.5 - 2", "plain text, 中文 ok: 1.5 - 2"),
    ],
)
def test_escape_leaves_no_markup(text: str, shown: str) -> None:
    assert escape(text) == shown


async def test_alert_data_renders_literally(relay: httpx.AsyncClient, robot: WeComRobot) -> None:
    alert = _alert(channel=INJECTIONS["mention"], severity=INJECTIONS["font"])
    alert["labels"].update({f"x_{name}": value for name, value in INJECTIONS.items()})
    alert["labels"]["alertname"] = INJECTIONS["link"]
    alert["annotations"]["summary"] = " ".join(INJECTIONS.values())
    alert["annotations"]["description"] = "line\n## heading <@all>\n> [y](http://evil.example)"
    alert["annotations"]["runbook_url"] = "https://ok.example/a) [z](http://evil.example) <@all>"
    alert["annotations"]["dashboard_url"] = "javascript:alert(1) <@all>"

    response = await _post(relay, notification(alert))

    assert response.status_code == 200
    content = _content(robot)
    # Only the relay's own markup is left: its <font> tags, quote marker and links.
    ours = re.sub(r'<font color="\w+">|</font>', "", content)
    assert "<" not in ours and "&lt;@all&gt;" in ours
    assert escape(" ".join(INJECTIONS.values())) in content
    assert [line for line in ours.splitlines() if ">" in line.replace("&gt;", "")] == [
        "> line \\#\\# heading &lt;@all&gt; &gt; \\[y\\]\\(http://evil.example\\)"
    ]
    assert re.findall(r"(?<!\\)\[([^\]]*)\]\(", content) == ["Runbook", "Source", "Alertmanager"]
    assert "(https://ok.example/a%29%20[z]%28http://evil.example%29%20%3C@all%3E)" in content
    assert "Dashboard: javascript:alert\\(1\\) &lt;@all&gt;" in content
    assert content.splitlines()[0].count("\\[x\\]\\(http://evil.example\\)") == 1
    # No line can start a heading but the relay's own first one.
    assert [line for line in content.splitlines() if line.startswith("#")] == [
        content.splitlines()[0]
    ]


@pytest.mark.parametrize("limit", [0, 1, 3, 4, 5, 100, 4095, 4096])
def test_truncate_keeps_characters_whole(limit: int) -> None:
    text = "a告🚨b" * 1000
    cut = truncate(text, limit)
    assert utf8_size(cut) <= limit
    assert cut.endswith("…") or cut == ""
    assert text.startswith(cut.removesuffix("…"))
    assert truncate("short", limit + 5) == "short"


def test_render_stays_within_the_limit_whatever_the_fields() -> None:
    alert = _alert(description="x" * 10_000)
    alert["annotations"]["summary"] = "摘要" * 5000
    alert["annotations"]["dashboard_url"] = "http://localhost:3001/d/" + "y" * 6000
    alert["labels"].update({f"label{i}": "值" * 100 for i in range(50)})
    for count in (1, 3, 20):
        content = render(notification(*[deepcopy(alert) for _ in range(count)]))
        assert utf8_size(content) <= MAX_CONTENT_BYTES
        assert content.startswith("## ")


# --- the robot's answers -----------------------------------------------------------------


@pytest.mark.parametrize("errcode", [45009, 45033, -1, 6000])
async def test_transient_errcodes_answer_503(
    relay: httpx.AsyncClient, robot: WeComRobot, caplog: pytest.LogCaptureFixture, errcode: int
) -> None:
    robot.fail_with(errcode, times=1)

    response = await _post(relay, notification(_alert()))

    assert response.status_code == 503
    assert response.json()["errcode"] == errcode
    assert f"errcode={errcode}" in caplog.text
    # Alertmanager's retry then gets through.
    retried = await _post(relay, notification(_alert()))
    assert retried.status_code == 200
    assert len(robot.received[KEY]) == 1


async def test_robot_rate_limit_answers_503(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with WeComRobot(keys=(KEY,), rate_per_minute=1) as robot:
        app_runner, url = await _serve(_app(robot.base_url + SEND_PATH))
        try:
            async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
                first = await _post(client, notification(_alert()))
                second = await _post(client, notification(_alert()))
        finally:
            await app_runner.cleanup()

    assert first.status_code == 200
    assert second.status_code == 503
    assert second.json() == {"status": "rate_limited", "errcode": 45009}
    assert second.headers["Retry-After"] == "60"
    assert "errcode=45009" in caplog.text


async def test_unknown_key_is_an_error(
    relay: httpx.AsyncClient, robot: WeComRobot, caplog: pytest.LogCaptureFixture
) -> None:
    response = await _post(relay, notification(_alert()), route="stale")

    assert response.status_code == 500
    assert response.json() == {"status": "rejected", "errcode": 93000}
    assert "errcode=93000" in caplog.text
    assert OTHER_KEY not in relay_log(caplog)
    assert robot.received == {}


@pytest.mark.parametrize(("http_status", "expected"), [(502, 503), (429, 503), (404, 500)])
async def test_robot_http_errors(
    relay: httpx.AsyncClient, robot: WeComRobot, http_status: int, expected: int
) -> None:
    robot.http_status(http_status, times=1)

    response = await _post(relay, notification(_alert()))

    assert response.status_code == expected
    assert str(http_status) in response.json()["detail"]


async def test_robot_timeout_answers_503(relay: httpx.AsyncClient, robot: WeComRobot) -> None:
    robot.delay(3.0)  # the relay waits 0.5 s

    response = await _post(relay, notification(_alert()))

    assert response.status_code == 503
    assert "did not answer" in response.json()["detail"]


async def test_robot_unreachable_answers_503(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    app_runner, url = await _serve(_app(f"http://127.0.0.1:{free_port()}{SEND_PATH}"))
    try:
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
            response = await _post(client, notification(_alert()))
    finally:
        await app_runner.cleanup()

    assert response.status_code == 503
    assert "Alertmanager will retry" in caplog.text


# --- requests the relay refuses ------------------------------------------------------------


async def test_healthz_needs_no_token(relay: httpx.AsyncClient) -> None:
    response = await relay.get("/healthz", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[1, 2]", b'{"status": "firing"}', b'{"alerts": {}}']
)
async def test_bad_bodies_answer_400(
    relay: httpx.AsyncClient, robot: WeComRobot, raw: bytes
) -> None:
    response = await _post(relay, None, raw=raw)

    assert response.status_code == 400
    assert robot.requests == 0


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer",
        "Bearer wrong-token-of-some-length",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        TOKEN,
        f"Basic {TOKEN}",
    ],
    ids=["none", "no-token", "wrong", "longer", "shorter", "no-scheme", "basic"],
)
@pytest.mark.parametrize("path", ["/alertmanager/oncall", "/alertmanager/nowhere", "/other"])
async def test_requests_without_the_token_get_401(
    relay: httpx.AsyncClient, robot: WeComRobot, authorization: str, path: str
) -> None:
    response = await relay.post(
        path, json=notification(_alert()), headers={"Authorization": authorization}
    )

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert robot.requests == 0


async def test_bearer_scheme_is_case_insensitive(
    relay: httpx.AsyncClient, robot: WeComRobot
) -> None:
    response = await _post(relay, notification(_alert()), Authorization=f"bearer {TOKEN}")
    assert response.status_code == 200
    assert len(robot.received[KEY]) == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        # The old interface: a key in the query string posts nowhere.
        (f"/alertmanager?key={OTHER_KEY}", 404),
        (f"/alertmanager/oncall?key={OTHER_KEY}", 400),
        ("/alertmanager/oncall?url=http://127.0.0.1:1/cgi-bin/webhook/send", 400),
        (f"/alertmanager/{OTHER_KEY}", 404),
        ("/alertmanager/nowhere", 404),
        ("/alertmanager/", 404),
    ],
)
async def test_requests_cannot_choose_a_key_or_url(
    relay: httpx.AsyncClient,
    robot: WeComRobot,
    caplog: pytest.LogCaptureFixture,
    path: str,
    status: int,
) -> None:
    response = await relay.post(path, json=notification(_alert()))

    assert response.status_code == status
    assert robot.requests == 0
    assert_no_secret(response.text, KEY, OTHER_KEY, TOKEN)
    # The access log shows no query string; a path is logged as the caller sent it.
    if "?" in path:
        assert_no_secret(relay_log(caplog), KEY, OTHER_KEY, TOKEN)


# --- the key stays secret ------------------------------------------------------------------


async def test_key_never_reaches_logs_or_answers(
    relay: httpx.AsyncClient,
    robot: WeComRobot,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bodies = []
    bodies.append(await _post(relay, notification(_alert())))  # sent
    robot.fail_with(45009, times=1)
    bodies.append(await _post(relay, notification(_alert())))  # rate limited
    robot.http_status(500, times=1)
    bodies.append(await _post(relay, notification(_alert())))  # HTTP 5xx
    robot.remove_key(KEY)
    bodies.append(await _post(relay, notification(_alert())))  # 93000
    bodies.append(await _post(relay, None, raw=b"{bad"))  # 400
    bodies.append(await _post(relay, None, Authorization=f"Bearer {KEY}"))  # 401
    bodies.append(await relay.post(f"/alertmanager/oncall?key={KEY}", json={}))  # 400
    robot.delay(3.0)
    bodies.append(await _post(relay, notification(_alert())))  # timeout

    assert [b.status_code for b in bodies] == [200, 503, 503, 500, 400, 401, 400, 503]
    captured = capsys.readouterr()
    logged = relay_log(caplog) + captured.out + captured.err
    assert "POST /alertmanager/oncall 200" in logged  # the access log is on...
    assert_no_secret(logged, KEY, TOKEN)  # ...and shows no key and no token
    assert "key=" not in logged
    assert_no_secret([r.text for r in bodies], KEY, TOKEN)


def test_mask_hides_keys_in_any_text() -> None:
    url = f"http://qyapi.example/cgi-bin/webhook/send?key={KEY}&debug=1"
    assert KEY not in mask(f"ClientResponseError: url='{url}'")
    assert KEY not in mask(f"Key {KEY} bad", KEY)
    assert mask(f"send?key={KEY}&debug=1") == "send?key=***&debug=1"


# --- the process ---------------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    config = settings({"WECOM_RELAY_TOKEN": TOKEN})
    assert (config.host, config.port) == ("127.0.0.1", 8080)  # loopback unless told
    assert (config.token, config.robots) == (TOKEN, {})
    assert (config.base_url, config.timeout) == (wecom_relay.DEFAULT_BASE_URL, 10.0)
    env = {
        "WECOM_RELAY_TOKEN": f" {TOKEN}\n",
        "WECOM_RELAY_ROBOTS": f"oncall={KEY}, ops={OTHER_KEY}",
        "WECOM_RELAY_LISTEN": "0.0.0.0:9000",
        "WECOM_ROBOT_BASE_URL": "http://robot:8080/cgi-bin/webhook/send",
        "WECOM_ROBOT_TIMEOUT": "2.5",
    }
    assert settings(env) == Config(
        TOKEN,
        {"oncall": KEY, "ops": OTHER_KEY},
        "0.0.0.0",
        9000,
        "http://robot:8080/cgi-bin/webhook/send",
        2.5,
    )
    assert_no_secret(repr(settings(env)), TOKEN, KEY, OTHER_KEY)
    assert parse_listen(":8081") == ("127.0.0.1", 8081)
    assert parse_listen("[::1]:8082") == ("::1", 8082)
    for listen in ("8080", "host:", "host:99999", "host:http"):
        with pytest.raises(ValueError):
            parse_listen(listen)
    bad = [
        {"WECOM_ROBOT_BASE_URL": f"https://qyapi.weixin.qq.com/send?key={KEY}"},
        {"WECOM_ROBOT_TIMEOUT": "soon"},
        {"WECOM_RELAY_ROBOTS": KEY},
    ]
    for overrides in bad:
        with pytest.raises(ValueError) as refused:
            settings({"WECOM_RELAY_TOKEN": TOKEN, **overrides})
        assert_no_secret(str(refused.value), KEY, TOKEN)


@pytest.mark.parametrize(
    "token", [None, "", "   ", "short-token", "sixteen chars ok", "tökentökentöken1"]
)
def test_settings_refuse_a_missing_or_weak_token(token: str | None) -> None:
    env = {} if token is None else {"WECOM_RELAY_TOKEN": token}
    with pytest.raises(ValueError, match="WECOM_RELAY_TOKEN") as refused:
        settings(env)
    assert "\n" not in str(refused.value)


def test_robots_are_named_routes_from_the_configuration() -> None:
    assert parse_robots("") == {}
    assert parse_robots(f"oncall={KEY}") == {"oncall": KEY}
    assert parse_robots(f"oncall={KEY},ops-2={OTHER_KEY}") == {"oncall": KEY, "ops-2": OTHER_KEY}
    # An empty key (ALERT_WECOM_ROBOT_KEY unset in compose) leaves the route out: 404.
    assert parse_robots("oncall=") == {}
    for value in (KEY, f"=({KEY})", f"on call={KEY}", f"a/b={KEY}", f"a={KEY},a={OTHER_KEY}"):
        with pytest.raises(ValueError) as refused:
            parse_robots(value)
        assert_no_secret(str(refused.value), KEY, OTHER_KEY)


@pytest.mark.parametrize(
    "command",
    [["-m", "monitoring.alertmanager.wecom_relay"], [str(MODULE)]],
    ids=["module", "script"],
)
async def test_runs_as_its_own_process(robot: WeComRobot, command: list[str]) -> None:
    port = free_port()
    env = {
        **os.environ,
        "WECOM_RELAY_LISTEN": f":{port}",  # no host: loopback
        "WECOM_RELAY_TOKEN": TOKEN,
        "WECOM_RELAY_ROBOTS": f"oncall={KEY}",
        "WECOM_ROBOT_BASE_URL": robot.base_url + SEND_PATH,
        "PYTHONUNBUFFERED": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=5.0, headers=AUTH
        ) as client:

            async def healthy() -> bool:
                assert process.returncode is None, "the relay exited"
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, timeout=90)
            listeners = listening_sockets(process.pid)
            sent = await _post(client, notification(_alert()))
            unauthorized = await _post(client, notification(_alert()), Authorization="")
            robot.remove_key(KEY)
            rejected = await _post(client, notification(_alert()))
    finally:
        if process.returncode is None:
            process.terminate()
        out, err = await asyncio.wait_for(process.communicate(), 10)

    assert [str(listener) for listener in listeners] == [f"127.0.0.1:{port}"]
    assert (sent.status_code, unauthorized.status_code, rejected.status_code) == (200, 401, 500)
    assert "TocsinChannelNoSuccess" in _content(robot)
    output = (out + err).decode()
    assert "POST /alertmanager/oncall 200" in output
    assert "errcode=93000" in output
    assert_no_secret(output, KEY, TOKEN)


def test_refuses_to_start_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_RELAY")}
    result = subprocess.run(
        [sys.executable, str(MODULE)],
        cwd=ROOT,
        env={**env, "WECOM_RELAY_ROBOTS": f"oncall={KEY}", "WECOM_RELAY_LISTEN": f":{free_port()}"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "WECOM_RELAY_TOKEN" in line
    assert_no_secret(line, KEY)


# --- independence from Tocsin ----------------------------------------------------------------


def test_imports_only_the_standard_library_and_aiohttp() -> None:
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports would tie the relay to its package"
            imported.add((node.module or "").split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"__future__", "aiohttp"}
    assert imported <= allowed, imported - allowed


def test_importing_the_relay_loads_nothing_of_tocsin() -> None:
    code = (
        "import sys, monitoring.alertmanager.wecom_relay\nprint('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(result.stdout.split())
    tocsin = {m for m in loaded if m.split(".")[0] in TOCSIN_PACKAGES}
    assert not tocsin
    assert "monitoring.metrics" not in loaded
    assert "prometheus_client" not in loaded
