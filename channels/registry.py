"""The explicit list of channels: adding one is one module and one line here."""

from __future__ import annotations

from collections.abc import Iterable

from channels.base import Channel, ChannelContext, ChannelUnavailable, DisabledChannel
from channels.email import EmailChannel
from channels.errors import Reason
from channels.system import SystemChannel
from channels.wecom import WeComChannel
from pipeline.config import Settings

CHANNELS: dict[str, type[Channel]] = {
    SystemChannel.name: SystemChannel,
    EmailChannel.name: EmailChannel,
    WeComChannel.name: WeComChannel,
}
CHANNEL_NAMES: tuple[str, ...] = tuple(CHANNELS)
# What a recipient without a settings row gets.
DEFAULT_CHANNELS: frozenset[str] = frozenset(CHANNEL_NAMES)


def parse_channels(text: str) -> frozenset[str]:
    """Returns the channel names in "system,email", or raises ValueError naming the unknown one."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown channel {unknown[0]!r}: choose from {', '.join(CHANNEL_NAMES)}")
    return frozenset(names)


def channel_reasons() -> dict[str, tuple[Reason, ...]]:
    """Returns, per channel, the reasons its sends can fail with (for metric series)."""
    return {name: tuple(getattr(cls, "reasons", ())) for name, cls in CHANNELS.items()}


def build_channels(
    settings: Settings, context: ChannelContext, names: Iterable[str] | None = None
) -> dict[str, Channel]:
    """Builds the named channels (all by default); an unavailable one becomes a DisabledChannel."""
    built: dict[str, Channel] = {}
    for name in names or CHANNEL_NAMES:
        try:
            built[name] = CHANNELS[name].from_settings(settings, context)
        except ChannelUnavailable as exc:
            built[name] = DisabledChannel(name, str(exc))
    return built
