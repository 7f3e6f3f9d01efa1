"""Schemathesis fuzzes the live API from its OpenAPI document: no 5xx, every answer as documented.

The API runs as a real `tocsin run` process; schemathesis runs as its own CLI, with an admin
token, a fixed seed and bounded examples, so the run is reproducible and ends on time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.integration.cli import Cli, Server, base_env
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


async def test_fuzzing_the_openapi_document_finds_nothing(tmp_path: Path) -> None:
    env = base_env(tmp_path, API_PORT="0", LOG_FORMAT="json", LOG_LEVEL="WARNING")
    cli = Cli(env, tmp_path)
    await cli.ok("db", "upgrade")
    token = (await cli.json("tokens", "create", "fuzz", "--scope", "admin"))["token"]
    # Something to find: users, an alert with notifications, a dead letter, an inbox message.
    await cli.ok("users", "upsert", "alice", "--email", "alice@example.com")
    await cli.ok("users", "upsert", "bob", "--channels", "system")
    await cli.ok("alerts", "create", "--title", "Disk full", "--recipient", "alice",
                 "--recipient", "bob")  # fmt: skip
    await cli.ok("run", "--drain")

    server = await Server.start("run", env={**env, "LOG_LEVEL": "INFO"}, cwd=tmp_path)
    try:

        async def url() -> str | None:
            assert server.running, server.stderr[-3000:]
            for line in server.lines:
                if '"api_serving"' in line:
                    return str(json.loads(line)["url"])
            return None

        base = await eventually(url, timeout=60)
        report = tmp_path / "junit.xml"
        process = await _schemathesis(base, token, report)
        output = (await process.communicate())[0].decode("utf-8", "replace")
    finally:
        await server.stop(timeout=60)
    assert process.returncode == 0, output[-6000:]
    assert "Traceback" not in server.stderr, server.stderr[-3000:]


async def _schemathesis(base: str, token: str, report: Path) -> asyncio.subprocess.Process:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is not installed (test extra)"
    return await asyncio.create_subprocess_exec(
        binary, "run", f"{base}/openapi.json",
        "--checks", CHECKS,
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", "10",
        "--seed", "20261202",
        "--workers", "1",
        "--request-timeout", "20",
        "--max-time", "90",
        "--generation-database", "none",
        "--phases", "examples,coverage,fuzzing",
        # Long-lived by design: a stream never "answers".
        "--exclude-path-regex", ".*/stream$",
        "--no-color",
        "--report", "junit", "--report-junit-path", str(report),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
