"""The channels one process works with, handed in by the composition root, never imported.

A ChannelSet holds the channel classes and each one's loaded settings. Everything that depends
on which channels exist (preferences, contacts, validation, metrics, queues, the CLI and the
API) asks it, so tests pin their own set and a new channel is one module and one registry line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from channels.base import (
    Channel,
    ChannelContext,
    ChannelSettings,
    ChannelUnavailable,
    Contact,
    DisabledChannel,
)
from channels.errors import Reason
from pipeline.fallbacks import Fallbacks, load_fallbacks
from pipeline.secret_url import secret_values
from pipeline.validation import InputError

ChannelClass = type[Channel[Any]]


@dataclass(frozen=True)
class BoundContact:
    """A contact kind with the settings of the channel that checks it."""

    contact: Contact
    settings: ChannelSettings

    def check(self, address: str) -> str:
        """Returns the address normalised, or raises InputError naming the kind (not a secret)."""
        kind = self.contact.kind
        if len(address) > self.contact.max_length:
            raise InputError(f"{kind} is longer than {self.contact.max_length} characters")
        try:
            return self.contact.check(address, self.settings)
        except InputError:
            raise
        except ValueError as exc:
            raise InputError(f"{kind} is invalid: {exc}") from None


class ChannelSet:
    """Channel classes by name, in order, with their settings and fallbacks."""

    def __init__(
        self,
        classes: Iterable[ChannelClass],
        settings: Mapping[str, ChannelSettings],
        fallbacks: Mapping[str, str | Iterable[str]] | None = None,
    ) -> None:
        self.classes: dict[str, ChannelClass] = {}
        for cls in classes:
            _check_declared(cls)
            if cls.name in self.classes:
                raise TypeError(f"two channels are named {cls.name!r}")
            self.classes[cls.name] = cls
        self.settings = {name: settings[name] for name in self.classes}
        self.contacts = _contacts(self.classes, self.settings)
        # FALLBACK_<CHANNEL>: raises ValueError naming the variable for a bad one.
        self.fallbacks = Fallbacks.checked(fallbacks or {}, self.names)

    @classmethod
    def load(cls, classes: Iterable[ChannelClass], **given: ChannelSettings) -> ChannelSet:
        """Reads each channel's settings from the environment, unless given by name, and every
        channel's FALLBACK_<CHANNEL>.

        Raises pydantic's ValidationError for a bad value, like Settings().
        """
        classes = tuple(classes)
        settings = {c.name: given.get(c.name) or c.settings_class() for c in classes}
        return cls(classes, settings, load_fallbacks([c.name for c in classes]).to)

    @property
    def names(self) -> tuple[str, ...]:
        """Every channel name, in registry order."""
        return tuple(self.classes)

    @property
    def defaults(self) -> frozenset[str]:
        """What a recipient who never chose channels gets: every channel on by default."""
        return frozenset(name for name, cls in self.classes.items() if cls.by_default)

    def reasons(self) -> dict[str, tuple[Reason, ...]]:
        """Per channel, the reasons its sends can fail with (for metric series)."""
        return {name: cls.reasons for name, cls in self.classes.items()}

    def secrets(self) -> list[str]:
        """Every secret value in the channels' settings (found by type), for redaction."""
        return [value for settings in self.settings.values() for value in secret_values(settings)]

    def deferrable(self, name: str) -> bool:
        """Whether the channel waits out quiet hours (the in-app inbox does not)."""
        return self.classes[name].deferrable

    def coalesces(self, name: str) -> bool:
        """Whether the channel sends an alert's notifications to one destination as one call."""
        return name in self.classes and self.classes[name].coalesces

    def parse(self, text: str) -> frozenset[str]:
        """Returns the channel names in "system,email", or raises InputError naming the choices."""
        names = [name.strip().lower() for name in text.split(",") if name.strip()]
        choices = ", ".join(self.names)
        unknown = [name for name in names if name not in self.classes]
        if unknown:
            raise InputError(f"unknown channel {unknown[0]!r}: choose from {choices}")
        if not names:
            raise InputError(f"channels must name at least one of {choices}")
        return frozenset(names)

    def build(self, context: ChannelContext, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Builds the named channels (all by default); an unavailable one becomes disabled."""
        built: dict[str, Channel[Any]] = {}
        for name in names or self.names:
            try:
                built[name] = self.classes[name].from_settings(self.settings[name], context)
            except ChannelUnavailable as exc:
                built[name] = DisabledChannel(name, str(exc))
        return built


def describe_channel(channels: ChannelSet, name: str, built: Channel[Any]) -> dict[str, object]:
    """What `tocsin channels` shows of a built channel: on or why not, and what it reads."""
    status = f"off: {built.why}" if isinstance(built, DisabledChannel) else "on"
    kinds = [contact.kind for contact in channels.classes[name].contacts]
    return {
        "channel": name,
        "status": status,
        "contacts": kinds,
        "waits_out_quiet_hours": channels.deferrable(name),
        "falls_back_to": list(channels.fallbacks.of(name)),
    }


def _check_declared(cls: ChannelClass) -> None:
    # A channel says what it is: a missing declaration is a bug found at start, not at a send.
    for attribute in ("name", "settings_class", "reasons"):
        if not hasattr(cls, attribute):
            raise TypeError(f"channel class {cls.__name__} does not declare {attribute}")


def _contacts(
    classes: Mapping[str, ChannelClass], settings: Mapping[str, ChannelSettings]
) -> dict[str, BoundContact]:
    """Every contact kind the channels read, once; channels may share a kind's declaration."""
    found: dict[str, BoundContact] = {}
    for name, cls in classes.items():
        for contact in cls.contacts:
            known = found.get(contact.kind)
            if known is not None and known.contact is not contact:
                raise TypeError(f"two channels declare the contact {contact.kind!r} differently")
            if known is None:
                found[contact.kind] = BoundContact(contact, settings[name])
    return found
