"""Four worker processes share each WeCom robot key's budget: the robot never sees too many.

The window is scaled down to WINDOW seconds (WECOM_RATE_LIMIT=20/2s, and the loopback robot
counts the same) so a run takes seconds instead of minutes; nothing depends on how fast the
machine is: a slow machine only posts less often than the limit allows.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest

from tests.integration.faults.harness import Cluster
from tests.support.wecom_server import WeComRobot, mentions

# Several processes against the PostgreSQL that allows 100 connections: with the fault suite.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("faults")]

WINDOW = 2
LIMIT = 20
ALERTS = 200
WORKERS = 4
_TITLE = re.compile(r"^## (.*)$", re.MULTILINE)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("keys", [1, 2], ids=["one-key", "pool-of-two"])
async def test_four_workers_never_post_past_a_robot_keys_limit(cluster: Cluster, keys: int) -> None:
    names = [f"key{n}" for n in range(1, keys + 1)]
    async with WeComRobot(keys=names, rate_per_minute=LIMIT, window=WINDOW) as robot:
        cluster.env_defaults.update(
            WECOM_ENABLED="true",
            WECOM_WEBHOOK_URL=",".join(robot.webhook_url(name) for name in names),
            WECOM_ALLOWED_HOSTS=robot.allow_entry,
            WECOM_RATE_LIMIT=f"{LIMIT}/{WINDOW}s",
        )
        # One recipient per alert: 200 posts, none coalesced.
        await cluster.seed(1, ALERTS, channels=("wecom",))
        procs = await asyncio.gather(
            cluster.spawn_producer(),
            *(cluster.spawn_worker(f"w{n}", channels=("wecom",)) for n in range(WORKERS)),
        )
        await cluster.wait_ready(*procs)
        states = await cluster.settle(timeout=240)
        posted = Counter(
            m for bodies in robot.received.values() for b in bodies
            for m in _TITLE.findall(b["markdown"]["content"])
        )  # fmt: skip
        most = [robot.most_in_any_window(name) for name in names]
        print(
            f"\n[{cluster.broker}] {ALERTS} posts over {keys} key(s) at {LIMIT}/{WINDOW}s: "
            f"{cluster.elapsed():.1f}s, most in a window {most}"
        )

    # The system and e-mail rows of the seeded users are SUPPRESSED (they chose WeCom only).
    assert states == {"SENT": ALERTS, "SUPPRESSED": 2 * ALERTS}
    assert robot.too_fast == 0, "the robot had to refuse posts over its limit (45009)"
    assert all(robot.most_in_any_window(name) <= LIMIT for name in names)
    # Every alert posted, once: the budget made posts wait, it never lost or doubled one.
    assert len(posted) == ALERTS and set(posted.values()) == {1}
    if keys > 1:
        # The pool's keys take turns.
        assert all(len(robot.received.get(name, [])) >= ALERTS // (2 * keys) for name in names)


@pytest.mark.timeout(300)
async def test_four_workers_share_one_alerts_recipients_without_deadlock(cluster: Cluster) -> None:
    # Every worker's first message pulls the alert's siblings along: they race for one set of
    # rows, and each must take what the others have not, never wait for their locks.
    people = 300
    async with WeComRobot(keys=["key1"]) as robot:
        cluster.env_defaults.update(
            WECOM_ENABLED="true",
            WECOM_WEBHOOK_URL=robot.webhook_url("key1"),
            WECOM_ALLOWED_HOSTS=robot.allow_entry,
        )
        [alert] = await cluster.seed(people, 1, channels=("wecom",))
        await cluster.sql(
            "INSERT INTO recipient_contacts (recipient_id, kind, address)"
            " SELECT recipient_id, 'wecom_userid', 'wx' || recipient_id FROM alert_recipients"
            " WHERE alert_id = :alert",
            alert=alert,
        )
        procs = await asyncio.gather(
            cluster.spawn_producer(),
            *(cluster.spawn_worker(f"w{n}", channels=("wecom",)) for n in range(WORKERS)),
        )
        await cluster.wait_ready(*procs)
        states = await cluster.settle(timeout=180)
        mentioned = Counter(
            m for b in robot.received["key1"] for m in mentions(b["markdown"]["content"])
        )
        deadlocks = sum(p.count("worker_batch_failed") for p in procs)

    assert states == {"SENT": people, "SUPPRESSED": 2 * people}
    assert len(mentioned) == people and set(mentioned.values()) == {1}
    assert len(robot.received["key1"]) < people // 10, "the recipients were not coalesced"
    assert deadlocks == 0
