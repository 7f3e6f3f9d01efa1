"""ChannelSet: a channel that does not describe itself is refused when the set is made."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field, SecretStr, ValidationError

from channels.base import (
    Channel,
    ChannelContext,
    ChannelSettings,
    ChannelUnavailable,
    Contact,
    Delivery,
    DisabledChannel,
)
from channels.errors import Reason
from channels.registry import CHANNELS
from pipeline.channel_set import ChannelSet
from pipeline.clock import ManualClock
from pipeline.validation import InputError
from tests.support.channels import pinned
from tests.support.pipeline import START


class PagerSettings(ChannelSettings):
    enabled: bool = Field(False)
    token: SecretStr = Field(SecretStr(""))


def _check_pager(number: str, _settings: Any) -> str:
    if not number.isdigit():
        raise ValueError("use digits only")
    return number


PAGER = Contact("pager", "a pager number", _check_pager, max_length=12)


class Pager(Channel[PagerSettings]):
    """A channel declared in full, as a new module would be."""

    name = "pager"
    settings_class = PagerSettings
    reasons = (Reason.CONNECTION_ERROR,)
    contacts: ClassVar[tuple[Contact, ...]] = (PAGER,)

    @classmethod
    def from_settings(cls, settings: PagerSettings, context: ChannelContext) -> Pager:
        if not settings.enabled:
            raise ChannelUnavailable("set PAGER_ENABLED=true")
        return cls()

    def render(self, delivery: Delivery) -> Delivery:
        return delivery

    async def send(self, payload: Any) -> None:
        return None


def pager_set(**fields: Any) -> ChannelSet:
    return ChannelSet([*CHANNELS, Pager], {**pinned().settings, "pager": PagerSettings(**fields)})


def test_a_new_channel_brings_its_name_reasons_secrets_and_contact() -> None:
    channels = pager_set(token=SecretStr("Planted-Pager-Token"))
    assert channels.names[-1] == "pager"
    assert channels.reasons()["pager"] == (Reason.CONNECTION_ERROR,)
    assert "Planted-Pager-Token" in channels.secrets()
    assert channels.parse("pager,system") == {"pager", "system"}
    assert channels.contacts["pager"].check("0123") == "0123"
    with pytest.raises(InputError, match=r"^pager is invalid: use digits only$"):
        channels.contacts["pager"].check("12a")
    with pytest.raises(InputError, match="longer than 12"):
        channels.contacts["pager"].check("1" * 13)


def test_an_unavailable_channel_is_built_disabled_saying_why() -> None:
    context = ChannelContext(None, ManualClock(START))  # type: ignore[arg-type]
    built = pager_set().build(context, ["pager"])["pager"]
    assert isinstance(built, DisabledChannel)
    assert built.why == "set PAGER_ENABLED=true"
    assert isinstance(pager_set(enabled=True).build(context, ["pager"])["pager"], Pager)


@pytest.mark.parametrize("missing", ["name", "settings_class", "reasons"])
def test_a_channel_that_does_not_declare_itself_is_refused(missing: str) -> None:
    declared = {
        "name": "pager",
        "settings_class": PagerSettings,
        "reasons": (Reason.CONNECTION_ERROR,),
    }
    del declared[missing]
    undeclared = type("Undeclared", (Channel,), {**declared, "render": None, "send": None})
    with pytest.raises(TypeError, match=f"Undeclared does not declare {missing}"):
        ChannelSet([undeclared], {"pager": PagerSettings()})


def test_two_channels_may_not_share_a_name_or_declare_one_contact_twice() -> None:
    class Twin(Pager):
        contacts: ClassVar[tuple[Contact, ...]] = ()

    class Rival(Pager):
        name = "rival"
        contacts: ClassVar[tuple[Contact, ...]] = (Contact("pager", "again", _check_pager),)

    settings = {"pager": PagerSettings(), "rival": PagerSettings()}
    with pytest.raises(TypeError, match="two channels are named 'pager'"):
        ChannelSet([Pager, Twin], settings)
    with pytest.raises(TypeError, match="declare the contact 'pager' differently"):
        ChannelSet([Pager, Rival], settings)

    class Sharing(Pager):
        name = "sharing"

    shared = ChannelSet([Pager, Sharing], {"pager": PagerSettings(), "sharing": PagerSettings()})
    assert list(shared.contacts) == ["pager"]


def test_fallbacks_are_read_from_the_environment_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FALLBACK_WECOM", " Email, system,email ")
    channels = ChannelSet.load(CHANNELS, **pinned().settings)
    assert channels.fallbacks.of("wecom") == ("email", "system")
    assert channels.fallbacks.of("email") == ()
    assert channels.fallbacks.backed_up("system") == ("wecom",)
    assert channels.fallbacks.describe("wecom") == "email,system"


def test_fallbacks_are_read_from_dot_env_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("FALLBACK_WEBHOOK=email\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert ChannelSet.load(CHANNELS, **pinned().settings).fallbacks.of("webhook") == ("email",)


@pytest.mark.parametrize(
    ("env", "loc", "message"),
    [
        ({"FALLBACK_WECOM": "nosuch"}, ("FALLBACK_WECOM",), "unknown channel 'nosuch'"),
        ({"FALLBACK_EMAIL": "email"}, ("FALLBACK_EMAIL",), "email cannot fall back to itself"),
        (
            {"FALLBACK_WECOM": "email", "FALLBACK_EMAIL": "system"},
            (),
            "FALLBACK_EMAIL is set, but email is the fallback of wecom",
        ),
    ],
    ids=["unknown", "itself", "chain"],
)
def test_a_bad_fallback_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], loc: tuple[str, ...], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as raised:
        ChannelSet.load(CHANNELS, **pinned().settings)
    [error] = raised.value.errors()
    assert error["loc"] == loc
    assert message in error["msg"]


def test_fallbacks_given_in_code_are_checked_the_same_way() -> None:
    with pytest.raises(ValueError, match=r"^FALLBACK_WECOM: unknown channel 'nosuch'"):
        pinned(fallbacks={"wecom": "nosuch"})
    with pytest.raises(ValueError, match=r"^FALLBACK_PAGER names no channel"):
        pinned(fallbacks={"pager": "email"})
    assert pinned(fallbacks={"wecom": "email"}).fallbacks.of("wecom") == ("email",)
