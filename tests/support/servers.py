"""Pytest fixtures for the loopback SMTP sink and WeCom robot, started in the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.smtp_server import SmtpSink
from tests.support.wecom_server import WeComRobot


@pytest.fixture
async def smtp_server() -> AsyncIterator[SmtpSink]:
    """Yields a started SMTP sink on a free loopback port."""
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
async def wecom_server() -> AsyncIterator[WeComRobot]:
    """Yields a started WeCom-like robot server with keys k1 and k2."""
    async with WeComRobot(keys=("k1", "k2")) as robot:
        yield robot
