"""The small interface every channel implements, and what a channel is given to render."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from channels.errors import PermanentError, Reason
from pipeline.outbound import Resolver, system_resolver

if TYPE_CHECKING:
    from pipeline.clock import Clock
    from pipeline.config import Settings
    from pipeline.db import SessionFactory


@dataclass(frozen=True)
class Delivery:
    """Everything a channel needs to render and send one notification."""

    notification_id: int
    channel: str
    attempt: int
    alert_id: int
    title: str
    body: str
    severity: str
    alert_created_at: datetime
    recipient_id: int
    username: str
    email: str | None = None
    wecom_userid: str | None = None
    wecom_webhook: str | None = field(default=None, repr=False)
    # The alert asked to mention everyone (WeCom <@all>); channels honour it on critical only.
    mention_all: bool = False


@dataclass(frozen=True)
class Contacts:
    """A recipient's addresses, as the producer sees them when it picks channels."""

    email: str | None = None
    wecom_userid: str | None = None
    wecom_webhook: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ChannelContext:
    """Shared resources a channel may use besides its settings."""

    session_factory: SessionFactory
    clock: Clock
    # How HTTP channels resolve a destination's name once before pinning it (tests map names).
    resolver: Resolver = system_resolver


class ChannelUnavailable(Exception):
    """Raised by from_settings when the channel is disabled or not configured."""


class Channel(ABC):
    """Renders and sends notifications of one kind; raises DeliveryError subclasses on failure."""

    name: ClassVar[str]
    # Settings attributes that hold secrets; their values are redacted everywhere.
    secret_settings: ClassVar[tuple[str, ...]] = ()
    # Push channels wait out quiet hours; the in-app inbox never does.
    deferrable: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings, context: ChannelContext) -> Channel:
        """Builds the channel, or raises ChannelUnavailable saying what to configure."""

    @classmethod
    def reachable(cls, contacts: Contacts) -> bool:
        """Tells whether a recipient with these contacts can be reached on this channel."""
        return True

    async def start(self) -> None:
        """Loads what the channel needs before its first render; the default needs nothing.

        The worker awaits it once per channel before delivering; it must be idempotent.
        """
        return None

    @abstractmethod
    def render(self, delivery: Delivery) -> Any:
        """Turns a delivery into this channel's payload, within its size limits."""

    @abstractmethod
    async def send(self, payload: Any) -> None:
        """Sends one payload; returns on success, raises a DeliveryError otherwise."""

    async def aclose(self) -> None:
        """Releases connections; the default channel holds none."""
        return None


class DisabledChannel(Channel):
    """Stands in for a channel that is off or unconfigured: every send fails as channel_disabled."""

    name = "disabled"

    def __init__(self, channel: str, why: str) -> None:
        self.channel = channel
        self.why = why

    @classmethod
    def from_settings(cls, settings: Settings, context: ChannelContext) -> Channel:
        raise NotImplementedError("DisabledChannel is built by the registry")

    def render(self, delivery: Delivery) -> Delivery:
        return delivery

    async def send(self, payload: Any) -> None:
        raise PermanentError(
            Reason.CHANNEL_DISABLED, f"channel {self.channel} is disabled: {self.why}"
        )
