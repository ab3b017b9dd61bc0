"""``flask --app app ledger ...``: operator commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from flask import Flask
from flask.cli import AppGroup

if TYPE_CHECKING:
    from app.ledger.memory import MockDB

ledger_cli = AppGroup("ledger", help="Operate the ledger.")


class DataDirInUse:
    """The app's store when an operator command runs beside the service that owns the data
    directory: commands that need no store (``ledger backup``) work, the others say why not."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def close(self) -> None:
        """Nothing to close: nothing was opened."""

    def __getattr__(self, name: str) -> Any:
        raise click.ClickException(
            f"{self._reason} This command needs the ledger itself: run it while the service is stopped "
            "(`ledger backup` works while it runs)."
        )


@ledger_cli.command("health")
def health_command() -> None:
    """Print the store's health and exit non-zero when it is not healthy."""
    from app.extensions import store

    report = store().health()
    click.echo(
        f"database={report.database} audit_log={report.audit_log} "
        f"performance={report.performance} operations={report.operation_count}"
    )
    if not (report.database and report.audit_log and report.performance):
        raise SystemExit(1)


_DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Work on this data directory (no server may be running on it) instead of the app's store.",
)


@ledger_cli.command("verify")
@_DATA_DIR_OPTION
def verify_command(data_dir: Path | None) -> None:
    """Verify the ledger: balances, conservation, replay and the hash chain.

    With --data-dir, offline and read-only: the snapshot and journal are read and
    checked (a torn tail is reported, not cut). Exits 1 and lists the problems when
    anything is wrong.
    """
    from app.extensions import store

    if data_dir is None:
        _report(store().verify())
        return
    ledger = _open(data_dir, read_only=True)
    try:
        recovery = ledger.recovery
        if recovery is not None:
            snapshot = "none" if recovery.snapshot is None else recovery.snapshot.path.name
            entries = recovery.entries
            click.echo(
                f"data_dir={data_dir} snapshot={snapshot} segments={len(recovery.segments)} entries={entries}"
            )
            torn = recovery.torn
            if torn is not None:
                click.echo(
                    f"torn tail: {torn.path.name} from byte {torn.torn_at} ({torn.torn_reason}, "
                    f"{torn.size - (torn.torn_at or 0)} bytes); it is cut off at the next start",
                    err=True,
                )
        _report(ledger.verify())
    finally:
        ledger.close()


@ledger_cli.command("snapshot")
@_DATA_DIR_OPTION
def snapshot_command(data_dir: Path | None) -> None:
    """Snapshot the ledger's state (with a checkpoint): the next start replays only the journal after it.

    Works on the app's store (LEDGER_DATA_DIR) or, with --data-dir, on that directory.
    """
    from app.extensions import store
    from app.ledger.errors import StorageUnavailable
    from app.ledger.memory import MockDB

    ledger = store() if data_dir is None else _open(data_dir, read_only=False)
    if not isinstance(ledger, MockDB):
        raise click.ClickException("Only the embedded store (LEDGER_STORE=memory) keeps snapshots.")
    try:
        report = ledger.snapshot()
    except StorageUnavailable as error:
        raise click.ClickException(f"{error.message} Set LEDGER_DATA_DIR or pass --data-dir.") from None
    finally:
        if data_dir is not None:
            ledger.close()
    click.echo(
        f"snapshot {report.path}: {report.records} records, {report.accounts} accounts, "
        f"{report.bytes} bytes in {report.seconds:.2f} s"
    )


def _open(data_dir: Path, *, read_only: bool) -> MockDB:
    from app.ledger.memory import MockDB
    from app.ledger.memory.files import JournalError

    try:
        return MockDB.open(data_dir, read_only=read_only)
    except (JournalError, OSError) as error:
        raise click.ClickException(str(error)) from None


def _report(report: Any) -> None:
    figures = " ".join(f"{name}={value}" for name, value in report.figures().items())
    if report.ok:
        click.echo(f"ok {figures}")
        return
    click.echo(f"FAILED {figures}", err=True)
    for problem in report.problems:
        click.echo(f"  - {problem}", err=True)
    raise SystemExit(1)


@ledger_cli.command("backup")
@click.argument("destination", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Back up this data directory instead of LEDGER_DATA_DIR.",
)
def backup_command(destination: Path, data_dir: Path | None) -> None:
    """Copy the embedded store's data directory into DESTINATION (new or empty), consistently,
    while the service keeps running. Restoring is starting the service on DESTINATION."""
    from app.extensions import config
    from app.ledger.memory.backup import backup
    from app.ledger.memory.files import JournalError

    source = data_dir
    if source is None:
        settings = config()
        if not settings.uses_memory_store or settings.data_dir is None:
            raise click.ClickException(
                "Nothing to back up here: set LEDGER_DATA_DIR (or pass --data-dir); a PostgreSQL "
                "ledger is backed up with PostgreSQL's own tools (pg_dump, base backups)."
            )
        source = Path(settings.data_dir)
    try:
        report = backup(source, destination)
    except (JournalError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"backup {report.destination}: {report.files} files, {report.bytes} bytes, "
        f"snapshot {report.snapshot or 'none'}, {report.segments} journal segments"
    )


@ledger_cli.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the PostgreSQL schema and print its version.

    Every worker also migrates when it starts; this runs the same step on its own
    (a deploy step before the workers start, or a check of the version).
    """
    from app.extensions import config

    settings = config()
    if settings.uses_memory_store:
        click.echo("LEDGER_STORE=memory: the embedded store has no schema to migrate.")
        return
    from app.ledger.postgres.schema import migrate, schema_version

    applied = migrate(settings.store)
    click.echo(
        f"schema version {schema_version(settings.store)}; applied now: {', '.join(applied) or 'none'}"
    )


def init_app(app: Flask) -> None:
    app.cli.add_command(ledger_cli)
