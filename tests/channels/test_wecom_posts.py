"""WeCom posts: one per alert and robot mentioning everyone, split into parts that fit, in order."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from channels.base import Delivery
from channels.wecom_markdown import MARKDOWN_MAX_BYTES, TEXT_MAX_BYTES, Post, compose
from tests.channels.test_wecom import make_delivery
from tests.support.wecom_server import mentions

NUMBER = re.compile(r"\((\d+)/(\d+)\)\n")


def recipients(count: int, **fields: object) -> list[Delivery]:
    return [
        make_delivery(notification_id=n, recipient_id=n, wecom_userid=f"user{n:04d}", **fields)
        for n in range(1, count + 1)
    ]


def size(text: str) -> int:
    return len(text.encode("utf-8"))


def numbers_of(post: Post) -> list[tuple[int, int]]:
    if len(post.parts) == 1:
        assert NUMBER.match(post.parts[0]) is None
        return [(1, 1)]
    found = [NUMBER.match(part) for part in post.parts]
    return [(int(m.group(1)), int(m.group(2))) for m in found if m is not None]


def assert_every_recipient_once(posts: list[Post], deliveries: list[Delivery]) -> None:
    carried = [d.notification_id for post in posts for d in post.deliveries]
    assert sorted(carried) == sorted(d.notification_id for d in deliveries)
    for post in posts:
        mentioned = [m for part in post.parts for m in mentions(part) if m != "all"]
        wanted = [
            d.contacts["wecom_userid"] for d in post.deliveries if "wecom_userid" in d.contacts
        ]
        assert mentioned == wanted


def test_thirty_recipients_of_one_alert_are_one_post_with_thirty_mentions() -> None:
    deliveries = recipients(30)
    [post] = compose(deliveries, max_parts=5)
    [content] = post.parts
    assert mentions(content) == [f"user{n:04d}" for n in range(1, 31)]
    assert post.deliveries == tuple(deliveries)
    assert content.count("Disk full on db-1") == 1


def test_700_cjk_characters_split_into_text_sized_parts_in_order() -> None:
    body = "磁盘已满，请立即处理。" * 70  # 700 characters, 2,100 bytes
    [post] = compose([make_delivery(body=body)], max_parts=5, max_bytes=TEXT_MAX_BYTES)
    assert len(post.parts) == 2
    assert all(size(part) <= TEXT_MAX_BYTES for part in post.parts)
    assert numbers_of(post) == [(1, 2), (2, 2)]
    joined = "".join(NUMBER.sub("", part, count=1) for part in post.parts)
    assert body in joined.replace("\n", "")  # whole characters, nothing lost, in order


def test_a_thousand_mentions_past_the_parts_become_several_posts() -> None:
    deliveries = recipients(1000, body="告警" * 3000)
    posts = compose(deliveries, max_parts=2)
    assert len(posts) > 1
    assert all(len(post.parts) <= 2 for post in posts)
    assert all(size(part) <= MARKDOWN_MAX_BYTES for post in posts for part in post.parts)
    assert_every_recipient_once(posts, deliveries)
    # Each post carries the alert, cut, with the pointer to its full text.
    assert all("the full text is alert 7" in post.parts[0] for post in posts)


def test_every_posts_mentions_start_on_their_own_paragraph() -> None:
    posts = compose(recipients(400, body="告警" * 3000), max_parts=1)
    assert len(posts) > 1
    for post in posts:
        [part] = post.parts
        assert "in Tocsin.)\n\n<@" in part, part[-200:]


def test_recipients_without_a_userid_ride_along_unmentioned() -> None:
    deliveries = [*recipients(2), make_delivery(notification_id=99, wecom_userid=None)]
    [post] = compose(deliveries, max_parts=5)
    assert {d.notification_id for d in post.deliveries} == {1, 2, 99}
    assert mentions(post.parts[0]) == ["user0001", "user0002"]


def test_a_userid_shared_by_two_recipients_is_mentioned_once() -> None:
    deliveries = [
        make_delivery(notification_id=n, recipient_id=n, wecom_userid="oncall") for n in (1, 2)
    ]
    [post] = compose(deliveries, max_parts=5)
    assert mentions(post.parts[0]) == ["oncall"]
    assert len(post.deliveries) == 2


@settings(database=None, max_examples=60, deadline=None)
@given(
    body=st.text(alphabet=st.sampled_from("ab 中文字<&[\n"), max_size=6000),
    people=st.integers(min_value=1, max_value=400),
    max_parts=st.integers(min_value=1, max_value=6),
    max_bytes=st.sampled_from([TEXT_MAX_BYTES, MARKDOWN_MAX_BYTES]),
)
def test_posts_always_fit_and_mention_everyone_once(
    body: str, people: int, max_parts: int, max_bytes: int
) -> None:
    deliveries = recipients(people, body=body)
    posts = compose(deliveries, max_parts=max_parts, max_bytes=max_bytes)
    for post in posts:
        assert 1 <= len(post.parts) <= max_parts
        assert all(0 < size(part) <= max_bytes for part in post.parts)
        total = len(post.parts)
        assert numbers_of(post) == [(n, total) for n in range(1, total + 1)]
    assert_every_recipient_once(posts, deliveries)
