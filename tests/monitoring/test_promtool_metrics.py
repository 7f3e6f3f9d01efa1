"""A live `tocsin run` serves /metrics that `promtool check metrics` passes without one remark."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.integration.cli import Cli, Server, base_env
from tests.monitoring.tools import require_tool
from tests.support.ports import free_port
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# After the start-up pass: bob's system notification sent, his e-mail one dead (e-mail is not
# enabled here), so sent, failed, dead-lettered and suppressed series all carry values.
SYSTEM_SENT = 'tocsin_delivery_attempts_total{channel="system",outcome="sent",reason="none"} 1.0'
EMAIL_DEAD = 'tocsin_dead_lettered_total{channel="email",reason="channel_disabled"} 1.0'


async def promtool_check_metrics(promtool: str, text: str) -> tuple[int, str]:
    """Pipes text to `promtool check metrics`; returns its exit code and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(text.encode()), 30)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_live_metrics_pass_promtool_lint(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    port = free_port()
    cli = Cli(base_env(tmp_path), tmp_path)
    await cli.ok("db", "upgrade")
    await cli.ok(
        "users", "upsert", "bob", "--email", "bob@example.com", "--channels", "system,email"
    )
    await cli.ok("alerts", "create", "--title", "Queue depth high", "--recipient", "bob")

    env = {
        **cli.env,
        "METRICS_PORT": str(port),
        "METRICS_ADDR": "127.0.0.1",
        "RELAY_INTERVAL": "0.2s",
    }
    server = await Server.start("run", env=env, cwd=tmp_path)
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:

            async def delivered() -> str | None:
                assert server.running, f"tocsin run exited early:\n{server.stderr[-3000:]}"
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/metrics")
                except httpx.TransportError:
                    return None
                text = response.text
                return text if SYSTEM_SENT in text and EMAIL_DEAD in text else None

            text: str = await eventually(delivered, timeout=90)
    finally:
        code = await server.stop(timeout=30)
    assert code == 0, f"exit {code}:\n{server.stderr[-3000:]}"

    status, output = await promtool_check_metrics(promtool, text)
    # Lint problems exit 3 and name the metric; a clean exposition prints nothing at all.
    assert (status, output.strip()) == (0, ""), f"promtool check metrics (exit {status}):\n{output}"


async def test_promtool_lint_flags_a_bad_exposition() -> None:
    # The check above is only worth something if promtool speaks up about a bad name.
    promtool = require_tool("promtool")
    bad = "# HELP fooSeconds x\n# TYPE fooSeconds counter\nfooSeconds 1\n"
    status, output = await promtool_check_metrics(promtool, bad)
    assert status != 0
    assert '"_total" suffix' in output
