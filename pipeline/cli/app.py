"""The `tocsin` command: run the pipeline, manage users and alerts, inspect and replay."""

from __future__ import annotations

import os
from datetime import timedelta
from enum import Enum
from typing import Annotated

import typer
from pydantic import AliasChoices, BaseModel, SecretStr

from channels.base import ChannelContext
from channels.registry import CHANNEL_NAMES
from pipeline import loop as event_loop
from pipeline.app import App, secrets_of
from pipeline.channel_set import describe_channel
from pipeline.cli.context import friendly_errors, load_channels, load_settings, run_async
from pipeline.cli.deliveries import audit, dlq, inbox, notifications
from pipeline.cli.directory import alerts, users
from pipeline.cli.groups import groups
from pipeline.cli.jobs import jobs, metrics
from pipeline.cli.output import emit, fail, stderr, stdout
from pipeline.cli.tokens import tokens
from pipeline.config import Settings
from pipeline.db import upgrade
from pipeline.durations import format_duration
from pipeline.fallbacks import variable
from pipeline.logs import configure_logging
from pipeline.notifications import count_by_state
from pipeline.producer import ProducerReport
from pipeline.redact import Redactor
from pipeline.runner import DrainReport, drain, run_forever
from pipeline.secret_url import SecretUrl

app = typer.Typer(
    name="tocsin",
    help="Tocsin: alert notifications over e-mail, WeCom and the in-app inbox, with retries, "
    "dead letters and metrics. Configure with environment variables (see README).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db, name="db")
app.add_typer(users, name="users", no_args_is_help=True)
app.add_typer(alerts, name="alerts", no_args_is_help=True)
app.add_typer(groups, name="groups", no_args_is_help=True)
app.add_typer(notifications, name="notifications", no_args_is_help=True)
app.add_typer(dlq, name="dlq", no_args_is_help=True)
app.command("inbox")(inbox)
app.command("audit")(audit)
app.add_typer(jobs, name="jobs", no_args_is_help=True)
app.add_typer(tokens, name="tokens", no_args_is_help=True)
app.command("metrics")(metrics)

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@app.callback()
def _quiet_by_default() -> None:
    # Logs go to stderr as JSON, warnings only, so stdout stays one clean document;
    # the long-running commands raise the level to LOG_LEVEL themselves.
    configure_logging("WARNING", "json")


@db.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Creates or migrates the tables (safe to run again)."""
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    with friendly_errors(settings):
        upgrade(settings, revision)
    stdout.print(f"database at {revision}: {settings.database_url.masked()}", highlight=False)


def _print_drain(report: DrainReport, as_json: bool) -> None:
    if as_json:
        emit(report, as_json=True)
        return
    p = report.produced
    stdout.print(
        f"produced {p.created} notification(s) from {p.alerts} alert(s) "
        f"({p.deferred} deferred by quiet hours, {p.suppressed} suppressed); "
        f"published {report.published}; delivery results recorded {report.delivered}",
        highlight=False,
    )


@app.command()
def run(
    drain_now: Annotated[
        bool, typer.Option("--drain", help="Do everything due now (incl. due retries), then exit.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Runs producer (hourly + at start), relay, workers, the API and /metrics in one process."""
    if drain_now:

        async def work(app_: App) -> DrainReport:
            await app_.queue.connect()
            with stderr.status("draining: producing…") as status:

                def show(published: int, delivered: int) -> None:
                    status.update(f"draining: {published} published, {delivered} delivered…")

                return await drain(app_, show)

        _print_drain(run_async(work, verbose=False), as_json)
        return
    _serve(producer=True, channels=list(CHANNEL_NAMES), concurrency=None, api=True)


@app.command("api")
def api_command(
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Listen on this port (API_PORT).")
    ] = None,
) -> None:
    """Serves the HTTP API alone (run replicas of it beside `tocsin producer` and workers)."""
    if port is not None:
        os.environ["API_PORT"] = str(port)
    _serve(producer=False, channels=None, concurrency=None, api=True)


@app.command()
def produce(as_json: Json = False) -> None:
    """Runs one producer pass now: expands every unprocessed alert."""

    async def work(app_: App) -> ProducerReport:
        return await app_.producer().run()

    report = run_async(work)
    emit(
        report
        if as_json
        else f"produced {report.created} notification(s) from {report.alerts} alert(s)",
        as_json=as_json,
    )


@app.command()
def producer() -> None:
    """Runs the hourly producer and the relay (several replicas are safe)."""
    _serve(producer=True, channels=None, concurrency=None)


@app.command()
def worker(
    channel: Annotated[
        list[str] | None, typer.Option(help="Only this channel; repeat for more (default: all).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Sends in flight per channel.")
    ] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Exit when the queues are empty.")] = False,
) -> None:
    """Runs a worker that delivers notifications from the channel queues."""
    names = channel or list(CHANNEL_NAMES)
    unknown = [n for n in names if n not in CHANNEL_NAMES]
    if unknown:
        fail(f"unknown channel {unknown[0]!r}: choose from {', '.join(CHANNEL_NAMES)}")
    if burst:
        _needs_a_broker(load_settings(), "worker --burst")

        async def work(app_: App) -> int:
            await app_.queue.connect()
            return await app_.worker(names, concurrency=concurrency).run_until_idle()

        stdout.print(f"delivery results recorded: {run_async(work, verbose=True)}")
        return
    _serve(producer=False, channels=names, concurrency=concurrency)


def _needs_a_broker(settings: Settings, command: str) -> None:
    """Fails when a command that runs apart from the others is given the in-process queue."""
    if settings.queue_scheme == "memory":
        fail(
            f"`tocsin {command}` on QUEUE_URL=memory:// would hand its work to no other process: "
            "run `tocsin run` (producer, relay and workers in one process), or set QUEUE_URL to "
            "a broker (amqp://... or redis://...)"
        )


def _serve(
    *,
    producer: bool,
    channels: list[str] | None,
    concurrency: int | None,
    api: bool = False,
) -> None:
    settings = load_settings()
    configured = load_channels()
    alone = producer != (channels is not None)  # a producer or a worker without the other
    if alone:
        _needs_a_broker(settings, "producer" if producer else "worker")
    redact = Redactor(secrets_of(settings, configured))
    configure_logging(settings.log_level, settings.log_format, redact)
    from prometheus_client import REGISTRY

    async def main() -> None:
        # Long-running processes report on the process registry, which /metrics serves.
        app_ = App.create(settings, channels=configured, registry=REGISTRY)
        try:
            await run_forever(
                app_,
                producer=producer,
                worker_channels=channels,
                concurrency=concurrency,
                api=api,
            )
        finally:
            await app_.aclose()

    with friendly_errors(settings, configured):
        event_loop.run(main())


@app.command()
def queues(as_json: Json = False) -> None:
    """Shows per channel queue depth, in-flight, consumers, dead letters and rows by state."""

    async def work(app_: App) -> list[dict[str, object]]:
        await app_.queue.connect()
        stats = await app_.queue.stats(list(CHANNEL_NAMES))
        counts = await count_by_state(app_.sessions)
        return [
            {
                **s.__dict__,
                **{
                    state.lower(): counts.get((s.channel, state), 0)
                    for state in ("PENDING", "QUEUED", "SENDING", "SENT", "DEAD")
                },
            }
            for s in stats
        ]

    emit(
        run_async(work),
        as_json=as_json,
        title="queues",
        columns=(
            "channel",
            "depth",
            "in_flight",
            "consumers",
            "dead_letters",
            "pending",
            "queued",
            "sending",
            "sent",
            "dead",
        ),
    )


@app.command("channels")
def channels_command(as_json: Json = False) -> None:
    """Lists the channels: on or why not, the contacts they read from users, quiet hours."""

    async def work(app_: App) -> list[dict[str, object]]:
        context = ChannelContext(app_.sessions, app_.clock)
        built = app_.channels.build(context)
        try:
            return [describe_channel(app_.channels, name, built[name]) for name in built]
        finally:
            for channel in built.values():
                await channel.aclose()

    emit(
        run_async(work),
        as_json=as_json,
        title="channels",
        columns=("channel", "status", "contacts", "waits_out_quiet_hours", "falls_back_to"),
    )


@app.command("config")
def show_config(as_json: Json = False) -> None:
    """Prints the effective configuration, secrets masked."""
    settings = load_settings()
    channels = load_channels()
    redact = Redactor(secrets_of(settings, channels))
    # A SecretUrl masks exactly its own password; the redactor would also mask a user name or
    # database that happens to equal it, hiding what operators come here to check.
    shown = {
        _env_name(model, name): (
            _shown(value) if isinstance(value, SecretUrl) else redact(_shown(value))
        )
        for model in (settings, *channels.settings.values())
        for name, value in model
    }
    shown |= {variable(name): channels.fallbacks.describe(name) for name in channels.names}
    emit(
        shown if as_json else [{"setting": k, "value": v} for k, v in shown.items()],
        as_json=as_json,
        title="configuration",
        columns=("setting", "value"),
    )


def _env_name(model: BaseModel, field: str) -> str:
    alias = type(model).model_fields[field].validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else field.upper()


def _shown(value: object) -> str:
    if isinstance(value, SecretUrl):
        return value.masked()
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else ""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return ",".join(_shown(item) for item in value)
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def main() -> None:
    """Entry point of the `tocsin` console script."""
    app()
