"""The small interface every channel implements: its settings, contacts, reasons and sending."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic_settings import BaseSettings, SettingsConfigDict

from channels.errors import DeliveryError, PermanentError, Reason
from pipeline.outbound import Resolver, system_resolver

if TYPE_CHECKING:
    from pipeline.clock import Clock
    from pipeline.db import SessionFactory


class ChannelSettings(BaseSettings):
    """A channel's own settings, read from the environment and `.env` like the core's.

    Each channel declares its fields with their env names (and the seed system's aliases);
    SecretStr and SecretUrl fields are found by type and redacted everywhere.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )


S = TypeVar("S", bound=ChannelSettings)


@dataclass(frozen=True)
class SecretParts:
    """How a secret contact is kept: a public part (shown) and a secret part, stored apart."""

    split: Callable[[str], tuple[str, str]]
    join: Callable[[str, str], str]


@dataclass(frozen=True)
class Contact:
    """An address a channel needs from a recipient, named by kind in the recipient's contacts.

    check normalises an address against the channel's settings, or raises ValueError with a
    one-line reason that never quotes a secret. Channels may share a kind (the WeCom userid).
    """

    kind: str
    description: str
    check: Callable[[str, Any], str]
    max_length: int = 320
    secret: SecretParts | None = None


# A recipient's addresses by contact kind, secret ones included (never printed).
Contacts = Mapping[str, str]


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
    contacts: Contacts = field(default_factory=dict, repr=False)
    # The alert asked to mention everyone (WeCom <@all>); channels honour it on critical only.
    mention_all: bool = False


@dataclass(frozen=True)
class Message:
    """One provider call's worth: the deliveries it carries and the payload sent for them."""

    deliveries: tuple[Delivery, ...]
    payload: Any


# The deliveries of a message that failed on their own, by notification id (a provider may
# refuse some addressees of one call and take the rest).
Failures = Mapping[int, DeliveryError]


@dataclass(frozen=True)
class ChannelContext:
    """Shared resources a channel may use besides its settings."""

    session_factory: SessionFactory
    clock: Clock
    # How HTTP channels resolve a destination's name once before pinning it (tests map names).
    resolver: Resolver = system_resolver
    # SEND_TIMEOUT: how long one send may take before it counts as failed.
    send_timeout: timedelta = timedelta(seconds=30)


class ChannelUnavailable(Exception):
    """Raised by from_settings when the channel is disabled or not configured."""


class Channel(ABC, Generic[S]):
    """Renders and sends notifications of one kind; raises DeliveryError subclasses on failure.

    A channel describes itself: its name, its settings class, the reasons its sends fail with
    (required: they label its metric series) and the contacts it reads from recipients.
    """

    name: ClassVar[str]
    settings_class: ClassVar[type[ChannelSettings]]
    reasons: ClassVar[tuple[Reason, ...]]
    contacts: ClassVar[tuple[Contact, ...]] = ()
    # Push channels wait out quiet hours; the in-app inbox never does.
    deferrable: ClassVar[bool] = True
    # Whether a recipient who never chose channels gets this one; an opt-in channel says False,
    # so adding it notifies nobody new until a recipient's channels name it.
    by_default: ClassVar[bool] = True
    # Whether notifications of one alert that go to one destination are sent as one provider
    # call: the claim then takes an alert's due siblings along, and group_key groups them.
    coalesces: ClassVar[bool] = False
    # Whether WORKER_CONCURRENCY bounds this channel's sends in flight. A channel whose sends
    # join one group commit at a time (the inbox) needs no bound: a whole batch joins one.
    bounded_sends: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: S, context: ChannelContext) -> Channel[S]:
        """Builds the channel, or raises ChannelUnavailable saying what to configure."""

    @classmethod
    def reachable(cls, contacts: Contacts) -> bool:
        """Tells whether a recipient with these contacts can be reached on this channel.

        By default everyone is: a channel with a global destination (WeCom's group robot,
        WEBHOOK_URL) says in render when neither it nor the recipient's own one is set.
        """
        return True

    async def start(self) -> None:
        """Loads what the channel needs before its first render; the default needs nothing.

        The worker awaits it once per channel before delivering; it must be idempotent.
        """
        return None

    @abstractmethod
    def render(self, delivery: Delivery) -> Any:
        """Turns a delivery into this channel's payload, within its size limits."""

    def group_key(self, delivery: Delivery) -> Hashable | None:
        """Names the destination a coalescing channel sends this delivery to; None: alone.

        Deliveries of one alert with the same key are rendered together by render_group.
        """
        return None

    def render_group(self, deliveries: Sequence[Delivery]) -> list[Message]:
        """Turns deliveries with one group key into messages (one call each, usually one)."""
        return [Message((delivery,), self.render(delivery)) for delivery in deliveries]

    @abstractmethod
    async def send(self, payload: Any) -> Failures | None:
        """Sends one payload; returns on success, raises a DeliveryError otherwise.

        A payload for several deliveries may succeed for some: it returns the others' errors.
        """

    async def aclose(self) -> None:
        """Releases connections; the default channel holds none."""
        return None


class DisabledChannel(Channel[ChannelSettings]):
    """Stands in for a channel that is off or unconfigured: every send fails as channel_disabled."""

    name = "disabled"
    settings_class = ChannelSettings
    reasons = (Reason.CHANNEL_DISABLED,)

    def __init__(self, channel: str, why: str) -> None:
        self.channel = channel
        self.why = why

    @classmethod
    def from_settings(cls, settings: ChannelSettings, context: ChannelContext) -> Channel[Any]:
        raise NotImplementedError("DisabledChannel is built by the registry")

    def render(self, delivery: Delivery) -> Delivery:
        return delivery

    async def send(self, payload: Any) -> None:
        raise PermanentError(
            Reason.CHANNEL_DISABLED, f"channel {self.channel} is disabled: {self.why}"
        )
