"""What the process listens on, and the one-line error when it cannot."""

from __future__ import annotations


class CannotListen(OSError):
    """A listener (the API, /metrics) could not bind its address: the message says which."""

    @classmethod
    def on(cls, what: str, host: str, port: int, settings: str) -> CannotListen:
        """The error for what failing to listen on host:port, naming its settings."""
        return cls(
            f"{what} cannot listen on {host}:{port}: the address is in use or not available "
            f"({settings})"
        )
