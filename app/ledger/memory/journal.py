"""The write-ahead journal of ``MockDB``: frames appended in audit order, group commit.

The files and their framing are ``app.ledger.memory.files``'.

Group commit
------------
``append`` only adds a frame to an in-memory queue (the caller holds the store's
audit lock, so queue order is audit order). ``wait_durable(lsn)`` makes it durable:
the first waiter becomes the leader, takes everything queued so far, writes it with
one ``write`` and one ``fdatasync`` *without* holding the journal's mutex, and wakes
the others; frames queued meanwhile go out with the next leader's write. Many
concurrent requests therefore share one sync.

Indexing
--------
Each frame may say where its audit records' rows and its holds' rows sit in its
payload; right after writing a chunk the leader adds their places to the index files
(``app.ledger.memory.archive``), before the sync, and ``indexed_sequence`` moves on.

Failure
-------
A write or sync error (disk full, I/O error), or a sync that does not return within
``stall_timeout_s``, fails the journal for good: the frames not yet synced are not
acknowledged (``JournalUnavailable``), every later ``append`` is refused, and only a
restart (which replays what is on disk) clears it. A failed ``fsync`` cannot be
retried safely: the kernel may have dropped the dirty pages it could not write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.ledger.counters import DurationHistogram
from app.ledger.memory.archive import RecordArchive, frame_entries
from app.ledger.memory.files import (
    FILE_MODE,
    FRAME_HEADER_BYTES,
    LSN,
    SEGMENT_MAGIC,
    JournalUnavailable,
    frame,
    segment_name,
    sync_directory,
    write_all,
)
from app.ledger.store import Durations

_log = logging.getLogger("goledger.journal")

#: A sync that has not returned after this long fails the journal.
DEFAULT_STALL_TIMEOUT_S = 10.0


class _Rotation:
    """A marker in the queue: frames after it go to segment ``number``."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number


class _Framed:
    """A queued frame, and where its rows sit in its payload (see ``Journal.append``)."""

    __slots__ = ("data", "holds", "records")

    def __init__(
        self, data: bytes, records: list[tuple[int, int]], holds: list[tuple[int, int, int]]
    ) -> None:
        self.data = data
        self.records = records
        self.holds = holds


class Journal:
    """Appends frames to the current segment; many waiters share one sync."""

    def __init__(
        self,
        directory: Path,
        segment: int,
        last_lsn: int,
        last_sequence: int,
        *,
        write: Callable[[int, memoryview], int] | None = None,
        sync: Callable[[int], None] | None = None,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        archive: RecordArchive | None = None,
    ) -> None:
        """Append to segment number ``segment`` (created if missing) after frame ``last_lsn``,
        which holds audit record ``last_sequence``.

        ``write``/``sync`` are the system calls (``os.write``, ``os.fdatasync``),
        injectable to simulate a failing disk. ``archive``: the index files the leader
        adds each frame's rows to.
        """
        self._archive = archive
        self._directory = directory
        self._write: Callable[[int, memoryview], int] = write or os.write
        self._sync: Callable[[int], None] = sync or os.fdatasync
        self._stall_timeout_s = stall_timeout_s
        self._condition = threading.Condition(threading.Lock())
        # Under _condition:
        self._queue: list[_Framed | _Rotation] = []
        self._appended_lsn = last_lsn
        self._durable_lsn = last_lsn
        # The last audit record in what is appended, and in what is durable.
        self._appended_sequence = last_sequence
        self._durable_sequence = last_sequence
        self._leader_active = False
        self._failure: str | None = None
        self._last_segment = segment  # the newest segment number queued
        self._counters = {"syncs": 0, "frames": 0, "bytes": 0}
        #: How long each group commit's ``fdatasync`` took (its own mutex).
        self._sync_durations = DurationHistogram()
        # Only the leader touches these (one leader at a time):
        self._segment = segment
        self._fd = self._open_segment(segment)
        self._segment_bytes = os.fstat(self._fd).st_size

    @property
    def segment(self) -> int:
        return self._segment

    @property
    def segment_bytes(self) -> int:
        """Bytes in the current segment (as of the last write; a hint for snapshots)."""
        return self._segment_bytes

    @property
    def failure(self) -> str | None:
        with self._condition:
            return self._failure

    @property
    def appended_lsn(self) -> int:
        with self._condition:
            return self._appended_lsn

    @property
    def durable_lsn(self) -> int:
        with self._condition:
            return self._durable_lsn

    @property
    def durable_sequence(self) -> int:
        """The last audit record that is on disk."""
        with self._condition:
            return self._durable_sequence

    def counters(self) -> dict[str, int]:
        """Syncs, frames and bytes written so far."""
        with self._condition:
            return dict(self._counters)

    def sync_durations(self) -> Durations:
        """How long the group commits' syncs took."""
        return self._sync_durations.snapshot()

    @property
    def indexed_sequence(self) -> int:
        """The last audit record the index files point at (a plain read: it only grows)."""
        return 0 if self._archive is None else self._archive.indexed

    def append(
        self,
        payload: bytes,
        sequence: int,
        records: list[tuple[int, int]] | None = None,
        holds: list[tuple[int, int, int]] | None = None,
    ) -> int:
        """Queue one frame whose last audit record is ``sequence``; its lsn.

        ``records``: where (offset, length) the rows of its audit records sit in
        ``payload``, in order; ``holds``: (ordinal, offset, length) of its hold rows.
        The caller holds the lock that orders the frames (the store's audit lock).
        """
        data = frame(self._appended_lsn + 1, payload)  # framed outside the mutex; lsn checked below
        with self._condition:
            if self._failure is not None:
                raise JournalUnavailable(self._failure)
            lsn = self._appended_lsn + 1
            if data[8:16] != LSN.pack(lsn):
                data = frame(lsn, payload)
            self._queue.append(_Framed(data, records or [], holds or []))
            self._appended_lsn = lsn
            self._appended_sequence = sequence
            return lsn

    def rotate(self) -> int:
        """Start a new segment after the frames queued so far; its number."""
        with self._condition:
            if self._failure is not None:
                raise JournalUnavailable(self._failure)
            self._last_segment += 1
            self._queue.append(_Rotation(self._last_segment))
            return self._last_segment

    def settle(self) -> None:
        """Write out everything queued, a rotation queued last included (its segment then
        exists on disk, as a snapshot that names it requires)."""
        self.wait_durable(self.appended_lsn)
        with self._condition:
            while self._leader_active:
                if not self._condition.wait(self._stall_timeout_s) and self._leader_active:
                    self._fail(f"a journal sync took longer than {self._stall_timeout_s} s")
            if self._failure is not None:
                raise JournalUnavailable(self._failure)
            if self._queue:
                self._lead()

    def wait_durable(self, lsn: int) -> None:
        """Return once frame ``lsn`` is on disk; ``JournalUnavailable`` if it never will be."""
        with self._condition:
            while self._durable_lsn < lsn:
                if self._failure is not None:
                    raise JournalUnavailable(self._failure)
                if self._leader_active:
                    if not self._condition.wait(self._stall_timeout_s) and self._leader_active:
                        self._fail(f"a journal sync took longer than {self._stall_timeout_s} s")
                    continue
                self._lead()

    def _lead(self) -> None:
        """Write and sync everything queued (called, and returning, with the mutex held)."""
        self._leader_active = True
        queue, self._queue = self._queue, []
        upto, upto_sequence = self._appended_lsn, self._appended_sequence
        self._condition.release()
        failure: str | None = None
        try:
            self._flush(queue)
        except OSError as error:
            failure = f"journal write failed: {error}"
        finally:
            self._condition.acquire()
        self._leader_active = False
        if failure is not None:
            self._fail(failure)
        elif self._failure is None:
            self._durable_lsn, self._durable_sequence = upto, upto_sequence
        self._condition.notify_all()

    def fail(self, reason: str) -> None:
        """Fail the journal for good (its owner found it cannot be kept consistent)."""
        with self._condition:
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            _log.critical("%s; the ledger no longer accepts writes until it is restarted", reason)
        self._condition.notify_all()

    def _flush(self, queue: list[_Framed | _Rotation]) -> None:
        chunk: list[_Framed] = []
        for item in queue:
            if isinstance(item, _Rotation):
                self._write_chunk(chunk)
                chunk = []
                self._switch_segment(item.number)
            else:
                chunk.append(item)
        self._write_chunk(chunk)

    def _write_chunk(self, chunk: list[_Framed]) -> None:
        if not chunk:
            return
        data = b"".join([framed.data for framed in chunk])
        write_all(self._write, self._fd, data)
        if self._archive is not None:
            self._index(chunk)
        started = time.perf_counter()
        self._sync(self._fd)
        self._sync_durations.observe(time.perf_counter() - started)
        self._segment_bytes += len(data)
        with self._condition:  # the leader runs without the mutex; the counters are under it
            self._counters["syncs"] += 1
            self._counters["frames"] += len(chunk)
            self._counters["bytes"] += len(data)

    def _index(self, chunk: list[_Framed]) -> None:
        """Add the places of the rows just written to the index files."""
        entries: list[bytes] = []
        holds: list[tuple[int, bytes]] = []
        start = self._segment_bytes + FRAME_HEADER_BYTES
        for framed in chunk:
            frame_records, frame_holds = frame_entries(self._segment, start, framed.records, framed.holds)
            entries += frame_records
            holds += frame_holds
            start += len(framed.data)
        assert self._archive is not None
        self._archive.add(b"".join(entries), holds)

    def _switch_segment(self, number: int) -> None:
        fd = self._open_segment(number)
        os.close(self._fd)
        self._fd, self._segment = fd, number
        self._segment_bytes = os.fstat(fd).st_size

    def _open_segment(self, number: int) -> int:
        path = self._directory / segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        if os.fstat(fd).st_size == 0:
            write_all(self._write, fd, SEGMENT_MAGIC)
            self._sync(fd)
            sync_directory(self._directory)
        return fd

    def close(self) -> None:
        """Sync what is queued and close the segment (the store is shutting down).

        Nothing can be appended afterwards: the directory's lock goes with the store.
        """
        with contextlib.suppress(JournalUnavailable):
            self.settle()
        with self._condition:
            if self._failure is None:
                self._failure = "the journal is closed"
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
