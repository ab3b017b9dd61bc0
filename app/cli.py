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


def init_app(app: Flask) -> None:
    app.cli.add_command(ledger_cli)
