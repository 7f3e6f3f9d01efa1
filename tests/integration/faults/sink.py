"""An SmtpSink that counts accepted messages per notification (by Message-ID) without parsing them.

Parsing every message costs the test's event loop more than the workers spend sending it; the
fault suite only needs to know which notification each message was for and how often it came.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.smtp_server import SmtpSink, _CountingSMTP, _Handler

# The deterministic Message-ID the e-mail channel gives each notification (id, installation).
MESSAGE_ID = re.compile(
    rb"^Message-ID:\s*<tocsin\.(\d+)\.[0-9a-f]{32}@[^>]+>", re.IGNORECASE | re.MULTILINE
)


class _FastHandler(_Handler):
    """Counts each accepted message under its notification id."""

    _sink: CountingSink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        sink = self._sink
        sink.in_data += 1
        try:
            if sink.data_delay:
                await asyncio.sleep(sink.data_delay)
            forced = sink._forced("DATA", server)
            if forced is not None:
                sink.refused += 1
                return forced
        finally:
            sink.in_data -= 1
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode("utf-8")
        match = MESSAGE_ID.search(raw)
        if match is None:
            sink.foreign.append(raw[:500])
        else:
            sink.received[int(match.group(1))] += 1
        sink.accepted += 1
        return "250 Message accepted for delivery"


class _FastSMTP(_CountingSMTP):
    def __init__(self, sink: CountingSink, **kwargs: Any) -> None:
        SMTP.__init__(self, _FastHandler(sink), **kwargs)
        self._sink = sink


class CountingSink(SmtpSink):
    """Accepts mail like SmtpSink, but keeps only a count per notification id."""

    def __init__(self) -> None:
        super().__init__()
        # notification id -> how many times a message for it was accepted
        self.received: Counter[int] = Counter()
        # accepted messages without a Tocsin Message-ID (first bytes of each)
        self.foreign: list[bytes] = []
        self.accepted = 0
        self.refused = 0
        # DATA commands being answered right now (delayed by data_delay)
        self.in_data = 0

    def _protocol(self) -> SMTP:
        return _FastSMTP(
            self,
            hostname="smtp.test",
            loop=asyncio.get_running_loop(),
            auth_require_tls=False,
        )
