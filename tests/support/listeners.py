"""Lists the TCP sockets a process (and its children) listens on, read from Linux's /proc.

/proc/PID/net/tcp and tcp6 list every socket of the process's network namespace; the ones
the process owns are those whose inode one of its /proc/PID/fd links names (`socket:[N]`).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # TCP_LISTEN in the st column


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket: the address and port it is bound to."""

    address: str
    port: int

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect (127.0.0.0/8 or ::1, not 0.0.0.0 or ::)."""
        return ipaddress.ip_address(self.address).is_loopback

    def __str__(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )


def _address(hex_address: str) -> str:
    # The kernel prints each 32-bit word of the address in host byte order.
    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _pids(pid: int) -> list[int]:
    """pid and all its descendants."""
    found, index = [pid], 0
    while index < len(found):
        for children in (PROC / str(found[index]) / "task").glob("*/children"):
            try:
                found.extend(int(child) for child in children.read_text().split())
            except OSError:  # the task ended meanwhile
                continue
        index += 1
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in (PROC / str(pid) / "fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    return inodes


def listening_sockets(pid: int) -> list[Listener]:
    """Every TCP socket pid or one of its descendants listens on, IPv4 and IPv6."""
    found: set[Listener] = set()
    for member in _pids(pid):
        inodes = _socket_inodes(member)
        for table in ("tcp", "tcp6"):
            path = PROC / str(member) / "net" / table
            if not path.exists():  # no IPv6 in this kernel
                continue
            for line in path.read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == LISTEN and inode in inodes:
                    address, port = local.split(":")
                    found.add(Listener(_address(address), int(port, 16)))
    return sorted(found, key=lambda listener: (listener.port, listener.address))
