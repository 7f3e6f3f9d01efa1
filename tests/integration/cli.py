"""Runs the real `tocsin` console script as a subprocess without blocking the test's event loop.

The SMTP sink and the WeCom robot serve from the test's loop, so the CLI must be awaited
(asyncio subprocesses), never run with subprocess.run, or the servers would stop answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.channels import setting_env_names
from tests.support.smtp_server import SmtpSink
from tests.support.wecom_server import WeComRobot

# The console script installed next to the interpreter running the tests (the venv's bin).
TOCSIN = str(Path(sys.executable).with_name("tocsin"))
if not Path(TOCSIN).exists():  # pragma: no cover - a system-wide install
    TOCSIN = shutil.which("tocsin") or TOCSIN
DEFAULT_TIMEOUT = 60.0


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Returns os.environ minus Tocsin settings, plus a SQLite file in tmp_path, no listeners."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in setting_env_names()}
    for noisy in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "PYTHONWARNINGS"):
        env.pop(noisy, None)
    env.update(
        {
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db",
            "QUEUE_URL": "memory://",
            "METRICS_PORT": "-1",
            "API_PORT": "-1",
            "RETRY_JITTER": "0",
            "NO_COLOR": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


EMAIL_FROM = "Tocsin Alerts <alerts@tocsin.test>"
MESSAGE_ID_DOMAIN = "tocsin.test"


def channel_env(sink: SmtpSink, robot: WeComRobot, key: str = "k1") -> dict[str, str]:
    """Environment variables enabling email through sink and WeCom through robot's key."""
    return {
        "EMAIL_ENABLED": "true",
        "EMAIL_SMTP_SERVER": sink.host,
        "EMAIL_SMTP_PORT": str(sink.port),
        "EMAIL_SECURITY": "none",
        "EMAIL_FROM": EMAIL_FROM,
        "WECOM_ENABLED": "true",
        "WECOM_WEBHOOK_URL": robot.webhook_url(key),
        "WECOM_ALLOWED_HOSTS": robot.allow_entry,
        "SEND_TIMEOUT": "10s",
    }


@dataclass(frozen=True)
class Result:
    """What one CLI run printed and how it exited."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """Parses stdout as the single JSON document --json promises."""
        try:
            return json.loads(self.stdout)
        except ValueError as exc:
            raise AssertionError(f"`tocsin {self.shown}` printed no JSON document: {self}") from exc

    @property
    def shown(self) -> str:
        """The command line, shortened for messages."""
        return " ".join(a if len(a) <= 60 else a[:60] + "…" for a in self.args)

    @property
    def error_lines(self) -> list[str]:
        """The non-blank lines on stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]

    def ok(self) -> Result:
        """Asserts exit code 0 and returns self."""
        assert self.code == 0, f"`tocsin {self.shown}` failed: {self}"
        return self

    def __str__(self) -> str:
        return (
            f"exit {self.code}\n--- stdout ---\n{self.stdout[-3000:]}\n"
            f"--- stderr ---\n{self.stderr[-3000:]}"
        )


async def tocsin(
    *args: str,
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Result:
    """Runs `tocsin *args` to completion while the event loop keeps serving the fake servers."""
    process = await asyncio.create_subprocess_exec(
        TOCSIN,
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(
            f"`tocsin {' '.join(args)[:200]}` did not finish within {timeout:g}s; "
            f"stderr: {err.decode(errors='replace')[-2000:]}"
        ) from None
    assert process.returncode is not None
    return Result(
        tuple(args), process.returncode, out.decode("utf-8"), err.decode("utf-8", errors="replace")
    )


@dataclass
class Cli:
    """Runs tocsin with one environment and working directory; `with_env` derives another."""

    env: dict[str, str]
    cwd: Path

    async def __call__(self, *args: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        return await tocsin(*args, env=self.env, cwd=self.cwd, timeout=timeout)

    async def ok(self, *args: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Runs and asserts success."""
        return (await self(*args, timeout=timeout)).ok()

    async def json(self, *args: str) -> Any:
        """Runs with --json, asserts success and returns the parsed document."""
        return (await self.ok(*args, "--json")).json()

    def with_env(self, **overrides: str) -> Cli:
        """Returns a Cli with some variables changed."""
        return Cli({**self.env, **overrides}, self.cwd)


@dataclass
class Server:
    """A long-running `tocsin run` whose stderr is read as it comes (a full pipe would block it)."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str], cwd: Path) -> Server:
        """Starts `tocsin *args` and begins collecting its stderr lines."""
        process = await asyncio.create_subprocess_exec(
            TOCSIN,
            *args,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        server = cls(process)
        server._reader = asyncio.create_task(server._read())
        return server

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))

    @property
    def stderr(self) -> str:
        """Everything written to stderr so far."""
        return "\n".join(self.lines)

    @property
    def running(self) -> bool:
        """True until the process exits."""
        return self.process.returncode is None

    async def stop(self, timeout: float = 30.0) -> int:
        """Sends SIGTERM and returns the exit code, killing the process if it overstays."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(
                f"tocsin did not exit within {timeout:g}s of SIGTERM; "
                f"stderr:\n{self.stderr[-3000:]}"
            ) from None
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code

    async def kill(self) -> None:
        """Kills the process if it still runs (teardown after a failed test)."""
        if self.running:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def record_alert(cwd: Path, title: str, *usernames: str) -> int:
    """Writes an alert record into cwd's SQLite file around the CLI, as the seed system's jobs did.

    `tocsin alerts create` expands an alert at once; a record written this way waits for a
    producer pass (the start-up one or the hourly sweep), which is what some tests watch.
    """
    from sqlalchemy import create_engine, insert, select
    from sqlmodel import col

    from pipeline.models import Alert, AlertRecipient, Recipient

    engine = create_engine(f"sqlite:///{cwd}/t.db")
    try:
        with engine.begin() as connection:
            alert_id = connection.execute(
                insert(Alert)
                .values(
                    title=title,
                    body=title,
                    severity="warning",
                    created_at=datetime.now(UTC),
                    mention_all=False,
                )
                .returning(col(Alert.id))
            ).scalar_one()
            assert alert_id is not None
            found = connection.execute(
                select(col(Recipient.id)).where(col(Recipient.username).in_(usernames))
            ).scalars()
            connection.execute(
                insert(AlertRecipient), [{"alert_id": alert_id, "recipient_id": r} for r in found]
            )
    finally:
        engine.dispose()
    return alert_id
