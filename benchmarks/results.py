"""The benchmark's results: its shape, timed figures and ceilings, as tables or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.ceilings import Ceiling

# The channels the pipeline benchmarks measure (each against its loopback server); the
# webhook channel is opt-in and not part of the shape.
BENCHED = ("system", "email", "wecom")


@dataclass(frozen=True)
class Shape:
    """R recipients, A alerts each addressed to all of them, on every channel: N = A x R x 3."""

    recipients: int
    alerts: int
    channels: tuple[str, ...] = BENCHED

    @classmethod
    def for_total(cls, notifications: int, recipients: int) -> Shape:
        """Returns the shape closest to `notifications` with at most `recipients` recipients."""
        per_alert = len(BENCHED)
        recipients = max(1, min(recipients, notifications // per_alert))
        alerts = max(1, round(notifications / (per_alert * recipients)))
        return cls(recipients, alerts)

    @property
    def total(self) -> int:
        """Notifications one producer pass creates."""
        return self.recipients * self.alerts * len(self.channels)

    @property
    def per_channel(self) -> int:
        """Notifications per channel in one pass."""
        return self.recipients * self.alerts


@dataclass
class Figure:
    """One timed pipeline step: how many rows it handled, how long it took, what came of them."""

    key: str
    label: str
    count: int
    seconds: float
    states: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Rows per second."""
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Results:
    """Everything one benchmark run measured."""

    shape: Shape
    setup: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    ceilings: list[Ceiling] = field(default_factory=list)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def figure(self, key: str) -> Figure:
        """Returns the figure with this key."""
        return next(f for f in self.figures if f.key == key)

    def ceiling(self, key: str) -> Ceiling:
        """Returns the ceiling with this key."""
        return next(c for c in self.ceilings if c.key == key)


# Which ceiling each figure is held against (the closest piece doing the same kind of work).
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("pass1_producer", "sqlite_executemany"),
    ("pass1_relay", "sqlite_executemany"),
    ("deliver_system", "sqlite_commit_per_row"),
    ("deliver_email", "smtp_1conn"),
    ("deliver_email", "smtp_{pool}conn"),
    ("deliver_wecom", "http_c8"),
    ("deliver_all", "serial_bound"),
)


def comparisons(results: Results) -> list[dict[str, Any]]:
    """Returns the table rows: figure, measured rate, ceiling measured now, ratio."""
    if not results.ceilings:
        return []
    pool = results.setup["email_pool_size"]
    rows = []
    for figure_key, ceiling_key in COMPARISONS:
        figure = results.figure(figure_key)
        label, ceiling = _ceiling(results, ceiling_key.format(pool=pool))
        rows.append(
            {
                "figure": figure.label,
                "measured_per_s": round(figure.rate, 1),
                "ceiling": label,
                "ceiling_per_s": round(ceiling, 1),
                "ratio": round(figure.rate / ceiling, 3) if ceiling else None,
            }
        )
    return rows


def _ceiling(results: Results, key: str) -> tuple[str, float]:
    if key != "serial_bound":
        found = results.ceiling(key)
        return found.label, found.rate
    # All three channels' work done one after another at their own ceilings.
    parts = ("sqlite_commit_per_row", "smtp_1conn", "http_c8")
    rate = len(parts) / sum(1 / results.ceiling(k).rate for k in parts)
    return "serial bound 3/(1/sqlite_row + 1/smtp_1conn + 1/http_c8)", rate


def as_json(results: Results) -> dict[str, Any]:
    """Returns the run as one JSON-ready document."""
    return {
        "shape": {**asdict(results.shape), "notifications": results.shape.total},
        "setup": results.setup,
        "figures": [
            {**asdict(f), "seconds": round(f.seconds, 4), "per_s": round(f.rate, 1)}
            for f in results.figures
        ],
        "ceilings": [
            {**asdict(c), "seconds": round(c.seconds, 4), "per_s": round(c.rate, 1)}
            for c in results.ceilings
        ],
        "comparison": comparisons(results),
        "servers": results.servers,
    }


def as_text(results: Results) -> str:
    """Returns the run as readable tables."""
    shape, setup = results.shape, results.setup
    lines = [
        "Tocsin embedded benchmark",
        f"  shape: N={shape.total} notifications = {shape.recipients} recipients x "
        f"{shape.alerts} alerts x {len(shape.channels)} channels ({', '.join(shape.channels)})",
        f"  setup: {setup['database']}, queue {setup['queue']}, metrics_port="
        f"{setup['metrics_port']}, loop {setup['event_loop']}, Python {setup['python']}, "
        f"revision {setup['revision']}",
        f"         worker_concurrency={setup['worker_concurrency']} worker_batch_size="
        f"{setup['worker_batch_size']} email_pool_size={setup['email_pool_size']} "
        f"wecom_concurrency={setup['wecom_concurrency']}",
        f"  NOTE: {setup['note']}",
        f"  servers: {setup['servers']}",
        "",
        f"{'step':<34}{'rows':>7}{'seconds':>9}{'rows/s':>10}  outcome states",
    ]
    for f in results.figures:
        states = " ".join(f"{k}={v}" for k, v in sorted(f.states.items()))
        lines.append(f"{f.label:<34}{f.count:>7}{f.seconds:>9.3f}{f.rate:>10.1f}  {states}")
    lines += ["", f"{'ceiling (measured now, alone)':<58}{'ops':>7}{'seconds':>9}{'ops/s':>10}"]
    for c in results.ceilings:
        lines.append(f"{c.label:<58}{c.count:>7}{c.seconds:>9.3f}{c.rate:>10.1f}")
    lines += [
        "",
        f"{'figure':<34}{'measured/s':>11}  {'ceiling measured now':<58}{'/s':>9}{'ratio':>7}",
    ]
    for row in comparisons(results):
        lines.append(
            f"{row['figure']:<34}{row['measured_per_s']:>11.1f}  {row['ceiling']:<58}"
            f"{row['ceiling_per_s']:>9.1f}{row['ratio']:>7.2f}"
        )
    lines += ["", "servers received: " + json.dumps(results.servers, sort_keys=True)]
    return "\n".join(lines)
