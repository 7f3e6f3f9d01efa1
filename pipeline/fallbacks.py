"""Which channels stand in for a channel whose notification died: FALLBACK_<CHANNEL>=a,b.

A fallback channel is held in reserve: a recipient who will be tried on a channel gets that
channel's fallbacks only if its notification dies there (workers/fallback.py). A fallback has
no fallbacks of its own, so a chain or a loop cannot be configured, and a fallback row that
dies creates nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AliasChoices, Field, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    # Only for annotations: the producer imports this module to run the reserve stage.
    from pipeline.producer import Candidate

PREFIX = "FALLBACK_"


def variable(channel: str) -> str:
    """Returns the environment variable naming a channel's fallbacks (FALLBACK_WECOM)."""
    return f"{PREFIX}{channel.upper()}"


def fallback_targets(
    channel: str, value: str | Iterable[str], names: Sequence[str]
) -> tuple[str, ...]:
    """Returns the fallbacks in "email,system" for channel, in order, or raises ValueError."""
    given = value.split(",") if isinstance(value, str) else value
    targets = tuple(dict.fromkeys(name.strip().lower() for name in given if name.strip()))
    for target in targets:
        if target not in names:
            raise ValueError(f"unknown channel {target!r}: choose from {', '.join(names)}")
        if target == channel:
            raise ValueError(f"{channel} cannot fall back to itself")
    return targets


@dataclass(frozen=True)
class Fallbacks:
    """Each channel's fallback channels, in the order given (only channels that have some)."""

    to: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def checked(cls, given: Mapping[str, str | Iterable[str]], names: Sequence[str]) -> Fallbacks:
        """Validates every channel's fallbacks against the channel names (ValueError if bad)."""
        unknown = [channel for channel in given if channel not in names]
        if unknown:
            raise ValueError(
                f"{variable(unknown[0])} names no channel: choose from {', '.join(names)}"
            )
        to = {
            channel: targets
            for channel, value in given.items()
            if (targets := _named(channel, value, names))
        }
        _check_one_level(to)
        return cls(to)

    def of(self, channel: str) -> tuple[str, ...]:
        """The channels a dead notification on channel falls back to (none by default)."""
        return self.to.get(channel, ())

    def backed_up(self, channel: str) -> tuple[str, ...]:
        """The channels that name channel as one of their fallbacks."""
        return tuple(primary for primary, targets in self.to.items() if channel in targets)

    def describe(self, channel: str) -> str:
        """The fallbacks of channel as FALLBACK_<CHANNEL> reads them ("" for none)."""
        return ",".join(self.of(channel))


def apply_fallback_reserve(
    candidates: Sequence[Candidate], fallbacks: Fallbacks
) -> list[Candidate]:
    """Holds back a recipient's fallback channels while a channel they stand in for is open.

    A held-back candidate gets no row now: the fallback creates it if that channel's
    notification dies. Suppressed candidates stay, so their row still says why.
    """
    if not fallbacks.to:
        return list(candidates)
    tried = {_identity(c) for c in candidates if c.open}
    return [c for c in candidates if not _held(c, tried, fallbacks)]


def _identity(candidate: Candidate, channel: str | None = None) -> tuple[int, int, str]:
    # Alert by object identity: a candidate's alert may not have been flushed yet.
    return (id(candidate.alert), candidate.recipient.id, channel or candidate.channel)


def _held(candidate: Candidate, tried: set[tuple[int, int, str]], fallbacks: Fallbacks) -> bool:
    return candidate.open and any(
        _identity(candidate, primary) in tried for primary in fallbacks.backed_up(candidate.channel)
    )


def _named(channel: str, value: str | Iterable[str], names: Sequence[str]) -> tuple[str, ...]:
    try:
        return fallback_targets(channel, value, names)
    except ValueError as exc:
        raise ValueError(f"{variable(channel)}: {exc}") from None


def _check_one_level(to: Mapping[str, tuple[str, ...]]) -> None:
    # A fallback row never falls back again (workers/fallback.py), so fallbacks configured for
    # a fallback would never be used; and held-in-reserve channels must not hold each other.
    for channel in (name for name, targets in to.items() if targets):
        primaries = [p for p, targets in to.items() if channel in targets]
        if primaries:
            raise ValueError(
                f"{variable(channel)} is set, but {channel} is the fallback of {primaries[0]}:"
                " a fallback has no fallbacks of its own"
            )


class _SettingsBase(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )


def load_fallbacks(names: Sequence[str]) -> Fallbacks:
    """Reads FALLBACK_<CHANNEL> for every channel from the environment and `.env`.

    Raises pydantic's ValidationError naming the variable for a bad value, like Settings().
    """
    settings = _settings_class(names)()
    return Fallbacks(
        {name: getattr(settings, _field(name)) for name in names if getattr(settings, _field(name))}
    )


def _field(channel: str) -> str:
    return f"fallback_{channel}"


def _settings_class(names: Sequence[str]) -> type[BaseSettings]:
    """A settings class with one FALLBACK_<CHANNEL> field per channel name."""
    fields: dict[str, Any] = {
        _field(name): (
            # NoDecode: "email,system" is our format, not JSON.
            Annotated[tuple[str, ...], NoDecode],
            Field((), validation_alias=AliasChoices(variable(name))),
        )
        for name in names
    }

    def targets(value: Any, info: Any) -> Any:
        channel = str(info.field_name).removeprefix("fallback_")
        return fallback_targets(channel, value, names) if isinstance(value, str) else value

    def one_level(settings: BaseSettings) -> BaseSettings:
        _check_one_level({name: getattr(settings, _field(name)) for name in names})
        return settings

    # Any: pydantic types the decorated validators as descriptor proxies, not callables.
    validators: dict[str, Any] = {
        "targets": field_validator(*fields, mode="before")(targets),
        "one_level": model_validator(mode="after")(one_level),
    }
    model: type[BaseSettings] = create_model(
        "FallbackSettings", __base__=_SettingsBase, __validators__=validators, **fields
    )
    return model
