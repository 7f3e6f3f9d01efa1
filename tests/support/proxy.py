"""An asyncio TCP proxy that injects network faults: delay, blackhole, cut after N bytes, sever.

Point a client at `proxy.port` instead of the server's. Modes apply at once to live and new
connections:

- `pass_through()`: forward everything (the default);
- `delay(seconds)`: forward every chunk `seconds` late, in order, at full throughput;
- `blackhole()`: a partition: accept connections but forward nothing and hold what was read,
  as TCP would while it retransmits; `pass_through()` heals it and the held bytes flow on;
- `cut_after(n)`: forward `n` more bytes on each connection (live ones and every new one), then
  close both sides, possibly mid-frame;
- `refuse()`: the server is down: reset live connections and every new one at once;
- `close_all()`: reset every live connection (the mode stays).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    budget: int | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False

    def close(self) -> None:
        """Resets both sides (RST where the transport allows it)."""
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.transport.abort()


class FaultProxy:
    """Forwards 127.0.0.1:port to target_host:target_port, with faults switched on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.accepted = 0
        self.cuts = 0
        self._delay = 0.0
        self._cut: int | None = None
        self._refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    @classmethod
    def to(cls, url: str) -> FaultProxy:
        """A proxy in front of the server a service URL points at."""
        return cls(*address_of(url))

    def route(self, url: str) -> str:
        """Returns url pointed at this proxy instead of the server."""
        return with_host(url, self.host, self.port)

    async def start(self) -> FaultProxy:
        """Starts listening on a free loopback port."""
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stops listening and resets every connection."""
        if self._server is not None:
            self._server.close()
        self.close_all()
        tasks = [t for link in list(self._links) for t in link.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- modes -----------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Forwards everything again (heals a blackhole, ends delay and cut modes)."""
        self._delay = 0.0
        self._cut = None
        self._refusing = False
        for link in self._links:
            link.budget = None
        self._flowing.set()

    def delay(self, seconds: float) -> None:
        """Forwards every chunk seconds after it was read."""
        self._delay = seconds
        self._flowing.set()

    def blackhole(self) -> None:
        """Holds every byte in both directions until pass_through()."""
        self._flowing.clear()

    def cut_after(self, n_bytes: int) -> None:
        """Closes each connection (live and new) once it has forwarded n_bytes more."""
        self._cut = n_bytes
        for link in self._links:
            link.budget = n_bytes
        self._flowing.set()

    def refuse(self) -> None:
        """Resets every live connection and each new one as soon as it is accepted."""
        self._refusing = True
        self._flowing.set()
        self.close_all()

    def close_all(self) -> None:
        """Resets every live connection."""
        for link in list(self._links):
            link.close()

    @property
    def live(self) -> int:
        """Connections currently open."""
        return sum(not link.closed for link in self._links)

    # --- forwarding ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer, budget=self._cut)
        if self._refusing:
            link.close()
            return
        self._links.add(link)
        try:
            # A partition: the connection is accepted but the server is not reached.
            await self._flowing.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            link.upstream = up_writer
            if link.closed:  # severed while connecting
                up_writer.transport.abort()
                return
            link.tasks = [
                asyncio.create_task(self._pump(link, reader, up_writer)),
                asyncio.create_task(self._pump(link, up_reader, writer)),
            ]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            link.close()
            self._links.discard(link)

    async def _pump(
        self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        # Reading runs ahead of writing so that a delay adds latency, not a throughput cap.
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer = asyncio.create_task(self._write(link, chunks, sink))
        loop = asyncio.get_running_loop()
        try:
            while not link.closed:
                data = await source.read(_CHUNK)
                if not data:
                    break
                chunks.put_nowait((loop.time(), data))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            chunks.put_nowait((0.0, b""))
            await asyncio.gather(writer, return_exceptions=True)
            link.close()

    async def _write(
        self, link: _Link, chunks: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while not link.closed:
            read_at, data = await chunks.get()
            if not data:
                return
            await self._flowing.wait()
            wait = read_at + self._delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if link.budget is not None:
                if len(data) >= link.budget:
                    data = data[: link.budget]
                    link.budget = 0
                else:
                    link.budget -= len(data)
            if link.closed:
                return
            try:
                sink.write(data)
                await sink.drain()
            except (OSError, RuntimeError):
                link.close()
                return
            if link.budget == 0:
                self.cuts += 1
                link.close()
                return


_DEFAULT_PORTS = {"amqp": 5672, "redis": 6379, "postgresql": 5432}


def address_of(url: str) -> tuple[str, int]:
    """Returns the host and port a service URL points at (its scheme's default port if none)."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS[parts.scheme.split("+")[0]]


def with_host(url: str, host: str, port: int) -> str:
    """Returns url with its host:port replaced (credentials, path and query kept)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))
