"""`tocsin run --drain`: everything due now is produced, relayed and delivered, with progress."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.models import State
from pipeline.runner import drain
from tests.support.pipeline import add_alert, add_user, open_app, rows


async def test_drain_delivers_everything_due_and_reports_progress(
    sqlite_settings: Settings,
) -> None:
    names = [f"user{i}" for i in range(40)]
    async with open_app(sqlite_settings) as app:
        for name in names:
            await add_user(app, name, channels="system")
        await add_alert(app, names)
        seen: list[tuple[int, int]] = []
        report = await drain(app, lambda published, delivered: seen.append((published, delivered)))
        states = {n.state for n in (await rows(app)).values() if n.channel == "system"}
    assert (report.published, report.delivered) == (40, 40)
    assert states == {State.SENT}
    assert seen[0] == (0, 0)  # reported at once, before anything was published
    assert seen == sorted(seen)  # counts only grow
    assert all(p <= 40 and d <= 40 for p, d in seen)
