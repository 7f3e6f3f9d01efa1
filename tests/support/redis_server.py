"""A redis-server of the test's own, on a free loopback port, that the test may kill and restart.

The shared server on 6379 must stay up for everything else; this one can crash. It keeps
nothing on disk (no RDB, no AOF), so a restart loses every stream, group and pending entry:
the worst case the relay's QUEUE_LEASE has to cover.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path
from urllib.parse import quote

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.support.ports import free_port
from tests.support.services import in_ci
from tests.support.waiting import eventually


class RedisServer:
    """One redis-server process; `crash()` kills it with SIGKILL, `start()` brings it back."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        # With a password, clients must AUTH (requirepass); the URL carries it.
        self.password = password
        self.port = free_port()
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    async def start(self, within: float = 10.0) -> None:
        """Starts the server on its port and waits until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            if in_ci():
                pytest.fail("redis-server is not installed")
            pytest.skip("redis-server is not installed")
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            *(("--requirepass", self.password) if self.password else ()),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await eventually(self._answers, timeout=within, interval=0.05)

    async def crash(self) -> None:
        """SIGKILLs the server: connections reset, everything in memory gone."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGKILL)
            await self._process.wait()
        self._process = None

    async def _answers(self) -> bool:
        client = Redis(
            port=self.port,
            password=self.password,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
        )
        try:
            return bool(await client.ping())
        except RedisError:
            return False
        finally:
            await client.aclose()
