"""The explicit list of channels: adding one is one module and one line here.

Only the composition roots (pipeline/app.py, the CLI and the benchmarks) read this list; every
other module is handed the channels it works with (pipeline/channel_set.py).
"""

from __future__ import annotations

from typing import Any

from channels.base import Channel
from channels.email import EmailChannel
from channels.system import SystemChannel
from channels.webhook import WebhookChannel
from channels.wecom import WeComChannel
from channels.wecom_app import WeComAppChannel

CHANNELS: tuple[type[Channel[Any]], ...] = (
    SystemChannel,
    EmailChannel,
    WeComChannel,
    WeComAppChannel,
    WebhookChannel,
)

# For help texts and the composition roots' defaults; everything else asks its ChannelSet.
CHANNEL_NAMES: tuple[str, ...] = tuple(channel.name for channel in CHANNELS)
