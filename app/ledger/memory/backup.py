"""An online backup of a data directory: a consistent copy taken while a server writes to it.

While a server runs, its segments, ``records.idx`` and ``checkpoints.log`` only grow
(``holds.idx`` entries are rewritten in place, each pointing at journal bytes written
before it), and a snapshot appears whole (renamed into place) before older ones are
deleted. So a copy in this order is a ledger:

1. ``checkpoints.log`` (a start ignores checkpoints past the records it finds);
2. the newest snapshot (its state covers the segments before its number);
3. ``records.idx`` and ``holds.idx`` (synced before that snapshot was put in place, so
   they cover it; a start rebuilds their entries after it from the journal);
4. the segments, in order: each one is final once the next exists; the last is copied
   as far as it is written, then the directory is listed again until no new segment
   appeared. A frame cut in half at the end of the last copy is a torn tail, which
   the start on the copy cuts off: the copy holds every operation acknowledged
   before the backup began, and a prefix of the journal after it.

The copy takes no lock and changes nothing in the source; restoring is starting on
the copy (``LEDGER_DATA_DIR=DEST``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from app.ledger.memory.archive import HOLDS_INDEX, RECORDS_INDEX
from app.ledger.memory.checkpoints import CHECKPOINTS_FILE
from app.ledger.memory.files import DIRECTORY_MODE, FILE_MODE, JournalError, sync_directory

_SEGMENT = re.compile(r"journal-([0-9]{8})\.log")
_SNAPSHOT = re.compile(r"snapshot-([0-9]{8})\.snap")
_CHUNK = 4 * 1024 * 1024
#: How often the newest snapshot may vanish under the copy (a newer one replaced it) before giving up.
_SNAPSHOT_ATTEMPTS = 10


@dataclass(frozen=True, slots=True)
class BackupReport:
    destination: str
    files: int
    bytes: int
    snapshot: str | None
    segments: int


def backup(source: Path, destination: Path) -> BackupReport:
    """Copy the data directory ``source`` (in use or not) into ``destination`` (new or empty)."""
    if not (source / RECORDS_INDEX).exists() and not any(_numbered(source, _SEGMENT)):
        raise JournalError(f"{source} is not a GoLedger data directory (no journal in it).")
    if destination.exists() and any(destination.iterdir()):
        raise JournalError(f"{destination} is not empty: a backup goes into a new or empty directory.")
    destination.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    os.chmod(destination, DIRECTORY_MODE)
    copier = _Copier(source, destination)
    copier.copy(CHECKPOINTS_FILE)
    snapshot = copier.newest_snapshot()
    copier.copy(RECORDS_INDEX)
    copier.copy(HOLDS_INDEX)
    segments = copier.segments()
    copier.sync()
    return BackupReport(str(destination), len(copier.copied), sum(copier.copied.values()), snapshot, segments)


class _Copier:
    def __init__(self, source: Path, destination: Path) -> None:
        self._source = source
        self._destination = destination
        #: Bytes copied so far, by file name.
        self.copied: dict[str, int] = {}

    def copy(self, name: str, *, missing_ok: bool = True) -> bool:
        """Append what ``name`` holds beyond what was copied of it already; ``False`` if it is gone."""
        try:
            source = os.open(self._source / name, os.O_RDONLY)
        except FileNotFoundError:
            if missing_ok:
                return False
            raise
        target = os.open(self._destination / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            offset = self.copied.get(name, 0)
            while True:
                data = os.pread(source, _CHUNK, offset)
                if not data:
                    break
                os.write(target, data)
                offset += len(data)
            self.copied[name] = offset
        finally:
            os.close(source)
            os.close(target)
        return True

    def newest_snapshot(self) -> str | None:
        for _ in range(_SNAPSHOT_ATTEMPTS):
            snapshots = _numbered(self._source, _SNAPSHOT)
            if not snapshots:
                return None
            name = snapshots[-1][1]
            if self.copy(name):
                return name
            (self._destination / name).unlink(missing_ok=True)
        raise JournalError(f"{self._source}: snapshots kept replacing each other; try the backup again.")

    def segments(self) -> int:
        """Copy every segment: the sealed ones whole, the last as far as it is written, until
        no newer segment appears."""
        while True:
            numbers = _numbered(self._source, _SEGMENT)
            for _, name in numbers:
                self.copy(name, missing_ok=False)
            if _numbered(self._source, _SEGMENT)[-1:] == numbers[-1:]:
                return len(numbers)

    def sync(self) -> None:
        for name in self.copied:
            fd = os.open(self._destination / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_directory(self._destination)


def _numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir(directory):
        match = pattern.fullmatch(entry)
        if match is not None:
            found.append((int(match.group(1)), entry))
    return sorted(found)
