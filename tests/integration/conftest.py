"""Fixtures for running the real `tocsin` CLI against the loopback SMTP sink and WeCom robot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import Cli, base_env, channel_env
from tests.support.smtp_server import SmtpSink
from tests.support.wecom_server import WeComRobot


@pytest.fixture
def cli(tmp_path: Path, smtp_server: SmtpSink, wecom_server: WeComRobot) -> Cli:
    """The CLI on a fresh SQLite file in tmp_path, email and WeCom pointed at the fake servers."""
    return Cli(base_env(tmp_path, **channel_env(smtp_server, wecom_server)), tmp_path)
