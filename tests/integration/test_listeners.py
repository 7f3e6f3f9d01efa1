"""Nothing Tocsin starts listens beyond loopback unless it is told to (METRICS_ADDR, ...).

Every listener of the real `tocsin run` is found in /proc, so one added later (an HTTP API)
is checked by the same test without changing it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest

from tests.integration.cli import Server, base_env, tocsin
from tests.support.listeners import Listener, listening_sockets
from tests.support.waiting import eventually

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the sockets from Linux's /proc"
)
# Start-up on a slow CI machine: migrations, imports, the start-up producer pass.
START_TIMEOUT = 90.0


def test_listening_sockets_sees_each_address_a_process_binds() -> None:
    addresses = ("127.0.0.1", "0.0.0.0", "::1", "::")
    with contextlib.ExitStack() as stack:
        bound = set()
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = stack.enter_context(socket.create_server((address, 0), family=family))
            bound.add(Listener(address, sock.getsockname()[1]))
        found = listening_sockets(os.getpid())
    assert bound <= set(found), found
    assert {listener.address for listener in bound if not listener.loopback} == {"0.0.0.0", "::"}


async def test_tocsin_run_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    # base_env drops every Tocsin variable from the environment: METRICS_ADDR and API_ADDR
    # keep their defaults; only the ports are free ones.
    env = base_env(tmp_path, METRICS_PORT="0", API_PORT="0", LOG_FORMAT="json")
    (await tocsin("db", "upgrade", env=env, cwd=tmp_path, timeout=START_TIMEOUT)).ok()
    server = await Server.start("run", env=env, cwd=tmp_path)
    try:

        async def up() -> bool:
            assert server.running, f"tocsin run exited early:\n{server.stderr[-3000:]}"
            # Serving /metrics, and done with the start-up producer pass: everything is up.
            return all(
                f'"{event}"' in server.stderr
                for event in ("metrics_serving", "api_serving", "job_run_success")
            )

        await eventually(up, timeout=START_TIMEOUT, interval=0.5)
        listeners = listening_sockets(server.process.pid)
    finally:
        code = await server.stop(timeout=60)
    assert code == 0, server.stderr[-3000:]

    (metrics_line,) = [line for line in server.lines if '"metrics_serving"' in line]
    assert listeners, f"no listening socket found, not even /metrics: {metrics_line}"
    assert any(f":{listener.port}" in metrics_line for listener in listeners), metrics_line
    (api_line,) = [line for line in server.lines if '"api_serving"' in line]
    assert any(f":{listener.port}" in api_line for listener in listeners), api_line
    exposed = [str(listener) for listener in listeners if not listener.loopback]
    assert not exposed, f"tocsin run listens beyond loopback on {exposed}"


@pytest.mark.parametrize(
    ("command", "setting", "names"),
    [
        ("api", "API_PORT", "the API cannot listen on 127.0.0.1:{port}"),
        ("worker", "METRICS_PORT", "/metrics cannot listen on 127.0.0.1:{port}"),
    ],
)
async def test_a_port_in_use_is_one_line_naming_the_listener(
    tmp_path: Path, command: str, setting: str, names: str
) -> None:
    env = base_env(tmp_path, QUEUE_URL="redis://127.0.0.1:6379/9")
    assert (await tocsin("db", "upgrade", env=env, cwd=tmp_path)).code == 0
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = await tocsin(command, env={**env, setting: str(port)}, cwd=tmp_path)
    assert result.code == 1, result.stderr
    last = result.error_lines[-1]
    assert last.startswith("error: " + names.format(port=port)), result.stderr
    assert setting in last and "Traceback" not in result.stderr
