"""Runs the loopback SMTP sink and WeCom robot in child processes, as real servers would be."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

WECOM_KEY = "bench"
# High enough that the robot never answers 45009 during a throughput run.
UNLIMITED = 10**9


async def _serve_smtp(conn: Connection) -> dict[str, int]:
    from tests.support.smtp_server import SmtpSink

    async with SmtpSink() as sink:
        conn.send(sink.port)
        await asyncio.to_thread(conn.recv)
        return {"messages": len(sink.messages), "connections": sink.connections}


async def _serve_wecom(conn: Connection) -> dict[str, int]:
    from tests.support.wecom_server import WeComRobot

    async with WeComRobot(keys=(WECOM_KEY,), rate_per_minute=UNLIMITED) as robot:
        conn.send(robot.port)
        await asyncio.to_thread(conn.recv)
        accepted = sum(len(bodies) for bodies in robot.received.values())
        return {"requests": robot.requests, "accepted": accepted}


def _serve(kind: str, conn: Connection, use_uvloop: bool) -> None:
    """Child process entry point: serves until the parent sends anything, then reports counts."""
    serve = _serve_smtp if kind == "smtp" else _serve_wecom
    if use_uvloop:
        import uvloop

        counts = uvloop.run(serve(conn))
    else:
        counts = asyncio.run(serve(conn))
    conn.send(counts)


@dataclass
class ServerProcess:
    """A server in a child process: its loopback port, and how to stop it and read its counts."""

    kind: str
    port: int
    process: BaseProcess
    conn: Connection

    @classmethod
    def start(cls, kind: str, *, use_uvloop: bool = False) -> ServerProcess:
        """Starts the server ("smtp" or "wecom") and waits until it listens."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve, args=(kind, child, use_uvloop), name=f"bench-{kind}", daemon=True
        )
        process.start()
        deadline = time.monotonic() + 30
        while not parent.poll(0.05):
            if not process.is_alive() or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{kind} server did not start (exit code {process.exitcode})")
        return cls(kind, parent.recv(), process, parent)

    def stop(self) -> dict[str, Any]:
        """Stops the server and returns what it received."""
        counts: dict[str, Any] = {}
        if self.process.is_alive():
            self.conn.send("stop")
            if self.conn.poll(30):
                counts = self.conn.recv()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
        return counts

    @property
    def webhook_url(self) -> str:
        """The robot's webhook URL (wecom servers only)."""
        return f"http://127.0.0.1:{self.port}/cgi-bin/webhook/send?key={WECOM_KEY}"
