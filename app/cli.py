"""``flask --app app ledger ...``: operator commands."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

ledger_cli = AppGroup("ledger", help="Operate the ledger.")


@ledger_cli.command("health")
def health_command() -> None:
    """Print the store's health and exit non-zero when it is not healthy."""
    from app.api.common import store

    report = store().health()
    click.echo(
        f"database={report.database} audit_log={report.audit_log} "
        f"performance={report.performance} operations={report.operation_count}"
    )
    if not (report.database and report.audit_log and report.performance):
        raise SystemExit(1)


@ledger_cli.command("verify")
def verify_command() -> None:
    """Verify the ledger: balances, conservation, replay and the hash chain.

    Exits 1 and lists the problems when anything is wrong.
    """
    from app.api.common import store

    report = store().verify()
    figures = " ".join(f"{name}={value}" for name, value in report.figures().items())
    if report.ok:
        click.echo(f"ok {figures}")
        return
    click.echo(f"FAILED {figures}", err=True)
    for problem in report.problems:
        click.echo(f"  - {problem}", err=True)
    raise SystemExit(1)


@ledger_cli.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the PostgreSQL schema and print its version.

    Every worker also migrates when it starts; this runs the same step on its own
    (a deploy step before the workers start, or a check of the version).
    """
    from app.api.common import config

    settings = config()
    if settings.uses_memory_store:
        click.echo("LEDGER_STORE=memory: the embedded store has no schema to migrate.")
        return
    from app.ledger.pgschema import migrate, schema_version

    applied = migrate(settings.store)
    click.echo(
        f"schema version {schema_version(settings.store)}; applied now: {', '.join(applied) or 'none'}"
    )


def init_app(app: Flask) -> None:
    app.cli.add_command(ledger_cli)
