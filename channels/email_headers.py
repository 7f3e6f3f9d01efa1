"""The e-mail channel's headers: strict address parsing, safe header text, the wire policy.

The stdlib is not used to parse: `email.utils.parseaddr` misreads `"a@example.com"@evil.com`
on Python < 3.11.10 (CVE-2023-27043), and on Python < 3.11.10 the header registry decodes an
RFC 2047 encoded-word (`=?utf-8?q?=0D=0A...?=`) when a header is set and writes the decoded
CR LF raw (CVE-2024-6923). So an address is accepted only as exactly one addr-spec without
`=?`, header text has its control characters replaced and every `=?` broken up, and the wire
policy refuses to write any header line that a receiver would read as the start of another.
"""

from __future__ import annotations

import re
import unicodedata
from email.headerregistry import Address, BaseHeader, HeaderRegistry, MessageIDHeader
from email.policy import EmailPolicy, Policy
from typing import cast

# Control characters (C0, DEL, C1), Unicode line and paragraph separators, lone surrogates.
_HEADER_BREAKERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
# A zero-width space inside "=?" keeps the text as it reads and stops it being an encoded-word.
_NOT_ENCODED_WORD = "=\u200b?"
# RFC 5322 atext (ASCII) or any non-ASCII character (RFC 6531; checked further by category).
_ATEXT = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])"
_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LETTER_DIGIT = r"(?:[A-Za-z0-9]|[^\x00-\x7f])"
_LABEL = rf"{_LETTER_DIGIT}(?:(?:{_LETTER_DIGIT}|-){{0,61}}{_LETTER_DIGIT})?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_LOCAL_MAX_BYTES = 64
_DOMAIN_MAX_BYTES = 253
# name-addr: a display name (possibly empty) and one angle-bracketed addr-spec.
_NAME_ADDR = re.compile(r"(?P<name>[^<>]*?) *<(?P<addr>[^<>]*)>")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_QUOTED_PAIR = re.compile(r"\\(.)")
# Outside quotes these would make a comment, a group, a route, a list or a second address.
_PHRASE_SPECIALS = re.compile(r'[()\[\]:;@\\,"]')
# A folded header line break not followed by folding white space starts a new header.
_BARE_LINE_BREAK = re.compile(rb"\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n")
_CRLF = b"\r\n"


class HeaderBroken(ValueError):
    """Raised instead of writing a header whose value would end its line."""


class _WirePolicy(EmailPolicy):
    """policy.SMTP, refusing to write a header line a receiver would read as a new header.

    Python 3.11.10 checks this itself (verify_generated_headers); older 3.11 does not.
    """

    def fold_binary(self, name: str, value: str) -> bytes:
        folded = super().fold_binary(name, value)
        if _BARE_LINE_BREAK.search(folded, 0, len(folded) - len(_CRLF)):
            raise HeaderBroken(name)
        return folded


class _OneLineMessageId(MessageIDHeader):
    """A Message-ID written on its header's line: folded, Python's parser reads it with a space."""

    name: str  # from BaseHeader, which the registry mixes into every header class

    def fold(self, *, policy: Policy) -> str:
        # Safe unfolded: render() builds it from an int, a UUID and a checked hostname.
        return f"{self.name}: {self}{policy.linesep}"


class _HeaderClasses(HeaderRegistry):
    """The stdlib's header registry, making each header's class once instead of per header."""

    def __init__(self) -> None:
        super().__init__()
        # The registry takes mixins such as MessageIDHeader; typeshed says BaseHeader.
        self.map_to_type("message-id", cast("type[BaseHeader]", _OneLineMessageId))
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


# policy.SMTP (CRLF line ends) with bodies kept 7-bit, so any SMTP server accepts them; for a
# non-ASCII address the headers are UTF-8 (RFC 6532) and the envelope asks for SMTPUTF8.
WIRE = _WirePolicy(linesep="\r\n", cte_type="7bit", header_factory=_HeaderClasses())
WIRE_UTF8 = WIRE.clone(utf8=True)


class AddressError(ValueError):
    """Refuses a value that is not exactly one address; the message never repeats the value."""


def header_text(text: str) -> str:
    """Returns text safe as an unstructured header value (a Subject) built from alert data."""
    return _HEADER_BREAKERS.sub(" ", text).replace("=?", _NOT_ENCODED_WORD)


def recipient_address(text: str) -> Address:
    """Returns a recipient's address if text is exactly one addr-spec, else raises AddressError.

    Syntax only, on the value as stored: which domains may receive mail (email-validator's
    rules, with no .test or .local) is decided when a recipient is saved, not here.
    """
    local, domain = split_addr_spec(text)
    return Address(username=local, domain=domain)


def sender_mailbox(text: str) -> Address:
    """Returns EMAIL_FROM ("Name <addr-spec>" or addr-spec) as an Address, or raises AddressError.

    Unlike a recipient, the sender may be at a name such as localhost (the default EMAIL_FROM).
    """
    value = text.strip(" ")
    if _HEADER_BREAKERS.search(value) or "=?" in value:
        raise AddressError("a control character or an encoded-word")
    match = _NAME_ADDR.fullmatch(value)
    name, addr_spec = (_display_name(match["name"]), match["addr"]) if match else ("", value)
    local, domain = split_addr_spec(addr_spec)
    return Address(display_name=name, username=local, domain=domain)


def split_addr_spec(text: str) -> tuple[str, str]:
    """Returns (local part, domain) of a dot-atom@hostname addr-spec, or raises AddressError.

    No quoted local part, comment, domain literal or encoded-word: exactly one plain address.
    """
    if "=?" in text:
        raise AddressError("an encoded-word is not an address")
    local, at, domain = text.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or not _HOSTNAME.fullmatch(domain):
        raise AddressError("not a dot-atom@hostname address")
    if len(local.encode()) > _LOCAL_MAX_BYTES or len(domain.encode()) > _DOMAIN_MAX_BYTES:
        raise AddressError("address too long")
    if not all(map(_letter_like, local + domain)):
        raise AddressError("a character that cannot be in an address")
    return local, domain


def _letter_like(char: str) -> bool:
    # Non-ASCII characters must be letters, marks or digits: no spaces, controls, format
    # characters (bidi overrides), symbols or lookalike dots such as U+3002.
    return char.isascii() or unicodedata.category(char)[0] in "LMN"


def _display_name(text: str) -> str:
    if not text:
        return ""
    quoted = _QUOTED.fullmatch(text)
    if quoted is not None:
        name = _QUOTED_PAIR.sub(r"\1", quoted[1])
    elif _PHRASE_SPECIALS.search(text):
        raise AddressError("a display name with specials must be quoted")
    else:
        name = " ".join(text.split())
    if "@" in name:
        raise AddressError("a display name must not look like an address")
    return name
