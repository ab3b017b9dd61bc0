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


def init_app(app: Flask) -> None:
    app.cli.add_command(ledger_cli)
