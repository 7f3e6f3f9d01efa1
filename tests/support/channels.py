"""The channel set a test pins: every registered channel, off unless pointed at a loopback server.

Settings never come from the developer's environment or `.env` here, so a test sees only what
it asks for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from channels.base import ChannelSettings
from channels.registry import CHANNELS
from pipeline.channel_set import ChannelClass, ChannelSet
from pipeline.config import Settings
from pipeline.fallbacks import variable
from tests.support.smtp_server import SmtpSink
from tests.support.wecom_server import WeComRobot


def channel_settings(cls: ChannelClass, **fields: Any) -> ChannelSettings:
    """The channel's settings from fields alone (field names or env names), never the env."""
    return cls.settings_class(_env_file=None, **fields)


def pinned(
    smtp: SmtpSink | None = None,
    robot: WeComRobot | None = None,
    *,
    classes: Iterable[ChannelClass] = CHANNELS,
    fallbacks: Mapping[str, str] | None = None,
    **fields: Mapping[str, Any],
) -> ChannelSet:
    """The channels of classes; e-mail and WeCom on when given their servers.

    fields maps a channel name to settings fields that override (e.g. wecom={"concurrency": 1});
    fallbacks maps a channel name to its FALLBACK_<CHANNEL> value (e.g. {"wecom": "email"}).
    """
    classes = tuple(classes)
    wanted: dict[str, dict[str, Any]] = {c.name: dict(fields.get(c.name, {})) for c in classes}
    if smtp is not None and "email" in wanted:
        wanted["email"] = {
            "enabled": True,
            "smtp_server": smtp.host,
            "smtp_port": smtp.port,
            "security": "none",
        } | wanted["email"]
    if robot is not None and "wecom" in wanted:
        wanted["wecom"] = {
            "enabled": True,
            "webhook_url": robot.webhook_url("k1"),
            "allowed_hosts": robot.allow_entry,
        } | wanted["wecom"]
    settings = {c.name: channel_settings(c, **wanted[c.name]) for c in classes}
    return ChannelSet(classes, settings, fallbacks)


def setting_env_names() -> set[str]:
    """Every environment variable the core and the registered channels read, upper-cased."""
    models: list[type[BaseSettings]] = [Settings, *(c.settings_class for c in CHANNELS)]
    names: set[str] = {variable(c.name) for c in CHANNELS}
    for info in (info for model in models for info in model.model_fields.values()):
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
    return names
