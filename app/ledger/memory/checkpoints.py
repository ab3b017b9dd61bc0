"""``MockDB``'s checkpoints: verified places in the audit trail, kept in ``checkpoints.log``.

A checkpoint (``app.ledger.model.Checkpoint``) is made with every snapshot of a data
directory (every ``LEDGER_CHECKPOINT_RECORDS`` records, when the journal outgrows
``LEDGER_SNAPSHOT_BYTES``, and at a clean shutdown), or, without a data directory,
every ``LEDGER_CHECKPOINT_RECORDS`` records from a copy of the balances. The file
uses the journal's framing under its own magic; one frame per checkpoint,
``[sequence, chain_head, balances_digest, created_at]``, synced before it counts.
Whatever is damaged in it (a checkpoint cut short by a crash, a failed append) is
dropped with what follows it; the snapshot each checkpoint belongs to carries it too
and puts the newest back at the next start.

``CheckpointBook._lock`` guards the list and the file; it is taken with no other lock
of the store's held, or after ``Durability._snapshot_lock`` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from app.ledger.audit import balances_digest
from app.ledger.errors import InvalidInput
from app.ledger.memory import persistence
from app.ledger.memory.files import FILE_MODE, frame, valid_frames, write_all
from app.ledger.model import Checkpoint, utc_now_iso

_log = logging.getLogger("goledger.journal")

CHECKPOINTS_FILE = "checkpoints.log"
CHECKPOINT_MAGIC = b"GOLEDGER-CKPT-01"


def checkpoint_of(sequence: int, chain_head: str, balances: Iterable[tuple[str, int]]) -> Checkpoint:
    """The checkpoint of the record ``sequence`` (hash ``chain_head``) and every account's
    balance right after it, made now."""
    return Checkpoint(sequence, chain_head, balances_digest(balances), utc_now_iso())


def checkpoint_row(point: Checkpoint) -> list[object]:
    return [point.sequence, point.chain_head, point.balances_digest, point.created_at]


def checkpoint_from_row(row: list[object]) -> Checkpoint:
    sequence, chain_head, balances_digest, created_at = row
    if not (isinstance(sequence, int) and isinstance(chain_head, str) and isinstance(balances_digest, str)):
        raise ValueError(f"not a checkpoint: {row!r}")
    return Checkpoint(sequence, chain_head, balances_digest, str(created_at))


class CheckpointBook:
    """The checkpoints of one ledger, oldest first; kept in a file when there is a directory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._points: list[Checkpoint] = []
        self._path: Path | None = None
        #: The last checkpoint's sequence (0: none), for a reader that must not take the lock.
        self.last_sequence = 0

    def open(self, directory: Path, *, read_only: bool, upto: int) -> None:
        """Read ``directory``'s checkpoints, those up to record ``upto`` (a backup's copy may
        name later ones). The file holds derived data: whatever is wrong in it (a torn or
        damaged frame, a frame written twice by a retried append) keeps the intact
        checkpoints before it, is logged, and the file is rewritten unless ``read_only``
        (each snapshot carries its own checkpoint, which the start puts back)."""
        path = directory / CHECKPOINTS_FILE
        points: list[Checkpoint] = []
        intact = True
        if path.exists():
            frames, intact = valid_frames(path, CHECKPOINT_MAGIC)
            for found in frames:
                try:
                    point = checkpoint_from_row(persistence.decode(found.payload))
                except (ValueError, TypeError):
                    intact = False
                    break
                if found.lsn != len(points) + 1 or (points and point.sequence <= points[-1].sequence):
                    intact = False
                    break
                points.append(point)
            if not intact:
                _log.warning(
                    "%s: kept the %d intact checkpoints before damage; rewriting it", path, len(points)
                )
        kept = [point for point in points if point.sequence <= upto]
        if not read_only and (not path.exists() or not intact or len(kept) < len(points)):
            self._rewrite(path, kept)
        with self._lock:
            self._points = kept
            self._path = None if read_only else path
            self.last_sequence = kept[-1].sequence if kept else 0

    def _rewrite(self, path: Path, points: list[Checkpoint]) -> None:
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            data = CHECKPOINT_MAGIC + b"".join(
                frame(number, persistence.encode(checkpoint_row(point)))
                for number, point in enumerate(points, start=1)
            )
            write_all(os.write, fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)

    def add(self, point: Checkpoint) -> None:
        """Keep a new checkpoint (durably first, when there is a file); one at or before the
        last one is ignored."""
        with self._lock:
            if self._points and point.sequence <= self._points[-1].sequence:
                return
            if self._path is not None:
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND, FILE_MODE)
                size = os.fstat(fd).st_size
                try:
                    data = frame(len(self._points) + 1, persistence.encode(checkpoint_row(point)))
                    write_all(os.write, fd, data)
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):  # not kept: leave no half of it behind
                        os.ftruncate(fd, size)
                    raise
                finally:
                    os.close(fd)
            self._points.append(point)
            self.last_sequence = point.sequence

    @property
    def last(self) -> Checkpoint | None:
        with self._lock:
            return self._points[-1] if self._points else None

    def all(self) -> list[Checkpoint]:
        with self._lock:
            return list(self._points)

    def at(self, sequence: int) -> Checkpoint:
        """The checkpoint at ``sequence``; ``invalid_parameter`` if there is none."""
        with self._lock:
            for point in self._points:
                if point.sequence == sequence:
                    return point
        raise InvalidInput("invalid_parameter", f"from: no checkpoint has sequence {sequence}.")

    def page(self, before: int | None, limit: int) -> tuple[list[Checkpoint], bool]:
        """Up to ``limit`` checkpoints below sequence ``before``, newest first; and whether more follow."""
        with self._lock:
            older = [point for point in self._points if before is None or point.sequence < before]
        chosen = older[::-1][:limit]
        return chosen, len(older) > limit
