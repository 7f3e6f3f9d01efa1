"""What a WeCom robot URL may look like, and how a recipient's robot is stored (origin + key)."""

from __future__ import annotations

import re

from pipeline.outbound import AllowList, Destination, UrlRefused, check_url

ROBOT_PATH = "/cgi-bin/webhook/send"
_KEY = re.compile(r"[A-Za-z0-9-]{1,128}")


def check_robot_url(url: str, allow: AllowList) -> Destination:
    """Returns the robot URL's destination, or raises UrlRefused (never quoting the key).

    Exactly `https://<allowed host>/cgi-bin/webhook/send?key=<1-128 of A-Z a-z 0-9 ->`:
    no other parameter, no second key, no fragment and no user info.
    """
    destination = check_url(url, allow)
    if destination.path != ROBOT_PATH:
        raise UrlRefused(f"a WeCom robot URL has the path {ROBOT_PATH}")
    robot_key(destination.query)
    return destination


def robot_key(query: str) -> str:
    """Returns the key of a robot URL's query "key=KEY", or raises UrlRefused."""
    name, equals, key = query.partition("=")
    if name != "key" or not equals:
        raise UrlRefused("a WeCom robot URL has exactly one parameter, key=...")
    if _KEY.fullmatch(key) is None:
        raise UrlRefused(
            "a WeCom robot key is 1-128 letters, digits or '-', and the only parameter"
        )
    return key


def robot_url(origin: str, key: str) -> str:
    """Returns the robot URL for a stored origin and key."""
    return f"{origin}{ROBOT_PATH}?key={key}"


def split_robot_url(url: str) -> tuple[str, str]:
    """Returns (origin, key) of a robot URL that check_robot_url allowed, to store apart.

    A URL that was not checked splits into something robot_url() joins back to a URL the
    send-time policy refuses, never into a usable destination it did not check.
    """
    head, _, key = url.partition("?key=")
    return head.removesuffix(ROBOT_PATH), key
