"""The data directory of ``MockDB``: its files, their framing, and reading them back.

Files in a data directory
-------------------------
``LOCK``
    Held with an exclusive ``flock`` by the one process that owns the directory;
    it holds that process's pid, for the message a second process gets.
``journal-NNNNNNNN.log``
    Segments of the journal (``app.ledger.memory.journal``), in order; never deleted:
    they hold every audit record (the ledger's permanent record). A segment
    starts with a 16-byte magic and holds frames: ``length`` (u32), ``crc32`` (u32, of
    the lsn and the payload), ``lsn`` (u64), then ``length`` bytes of payload. Frames
    are numbered 1, 2, 3… across segments (the lsn), so a missing or repeated frame is
    noticed.
``snapshot-NNNNNNNN.snap``
    The state (accounts, pending holds, idempotency keys; no history) as of the end of
    segment ``NNNNNNNN - 1``, in the same framing. Written to a temporary name,
    synced, then renamed: a snapshot is there whole or not at all. Older snapshots are
    deleted once it is in place; a start replays only the segments after it.
``records.idx``, ``holds.idx``
    Where each audit record and each hold's latest state sit in the segments
    (``app.ledger.memory.archive``).
``checkpoints.log``
    The checkpoints (``app.ledger.memory.checkpoints``).

Reading
-------
A frame that is cut short, or whose checksum fails, at the very end of the last
segment is a torn tail (a crash in mid-write, never acknowledged): it is cut off and
reported. Damage anywhere else (a bad frame followed by a valid later one, a bad
frame in an older segment or a snapshot, a gap in the numbering) is corruption: the
start stops with ``JournalCorrupt`` naming the file and the byte offset.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_log = logging.getLogger("goledger.journal")

SEGMENT_MAGIC = b"GOLEDGER-JRNL-01"
SNAPSHOT_MAGIC = b"GOLEDGER-SNAP-01"
_FRAME = struct.Struct("<IIQ")
#: Bytes before a frame's payload (length, checksum, lsn).
FRAME_HEADER_BYTES = _FRAME.size
LSN = struct.Struct("<Q")
#: The largest payload a frame may carry (a full batch is about 2 MiB).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

_SEGMENT_NAME = re.compile(r"journal-([0-9]{8})\.log")
_SNAPSHOT_NAME = re.compile(r"snapshot-([0-9]{8})\.snap")


class JournalError(Exception):
    """The data directory cannot be used; the message says why and where."""


class DataDirLocked(JournalError):
    """Another process owns the data directory."""


class JournalCorrupt(JournalError):
    """Damage that is not a torn tail: refusing to guess which data to drop."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset


class JournalUnavailable(Exception):
    """The journal has failed: nothing more can be made durable until a restart."""


def segment_name(number: int) -> str:
    return f"journal-{number:08d}.log"


def snapshot_name(number: int) -> str:
    return f"snapshot-{number:08d}.snap"


def frame(lsn: int, payload: bytes) -> bytes:
    """One frame: length, checksum of lsn and payload, lsn, payload."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"a journal frame holds at most {MAX_PAYLOAD_BYTES} bytes, not {len(payload)}")
    lsn_bytes = LSN.pack(lsn)
    checksum = zlib.crc32(payload, zlib.crc32(lsn_bytes))
    return _FRAME.pack(len(payload), checksum, lsn) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int
    lsn: int
    payload: bytes


@dataclass(slots=True)
class FileScan:
    """The frames of one file, and where (and why) a torn tail starts, if any."""

    path: Path
    frames: list[Frame] = field(default_factory=list)
    torn_at: int | None = None
    torn_reason: str = ""
    size: int = 0
    #: How many frames were read (``frames`` is emptied once they are loaded).
    frame_count: int = 0

    def release_frames(self) -> None:
        """Drop the payloads once loaded: a store keeps its state, not the bytes it came from."""
        self.frame_count = len(self.frames)
        self.frames = []


def _frame_at(data: bytes, offset: int) -> tuple[Frame | None, str]:
    """The valid frame at ``offset``, or ``None`` and why not."""
    end = len(data)
    if offset + _FRAME.size > end:
        return None, "frame header cut short"
    length, checksum, lsn = _FRAME.unpack_from(data, offset)
    if length > MAX_PAYLOAD_BYTES:
        return None, f"frame length {length} is impossible"
    start = offset + _FRAME.size
    if start + length > end:
        return None, "frame cut short"
    payload = data[start : start + length]
    if zlib.crc32(payload, zlib.crc32(LSN.pack(lsn))) != checksum:
        return None, "checksum mismatch"
    return Frame(offset, lsn, payload), ""


def _valid_frame_after(data: bytes, offset: int, after_lsn: int) -> int | None:
    """The offset of a valid frame numbered above ``after_lsn`` anywhere past ``offset``.

    Finding one means the damage at ``offset`` is not a torn tail: data the process
    had written (and maybe acknowledged) follows it. Frames are found by their lsn,
    whose six high bytes are the same as ``after_lsn + 1``'s for the next 65,536
    numbers (and so on, 65,536 at a time, up to as many frames as the rest of the
    file could hold); every place those bytes occur is tried as a frame.
    """
    first = after_lsn + 1
    most_frames = (len(data) - offset) // _FRAME.size + 1
    for step in range(0, most_frames + 0x10000, 0x10000):
        needle = LSN.pack(first + step)[2:]
        position = data.find(needle, offset + 1)
        while position != -1:
            start = position - 10  # the lsn's high bytes sit 10 bytes into the frame header
            if start > offset:
                found = _frame_at(data, start)[0]
                if found is not None and found.lsn > after_lsn:
                    return start
            position = data.find(needle, position + 1)
    return None


def valid_frames(path: Path, magic: bytes) -> tuple[list[Frame], bool]:
    """The intact frames at the start of a file of derived data, whatever their numbers; and
    whether the whole file was read that way (``False``: something after them, or no magic)."""
    data = path.read_bytes()
    if data[: len(magic)] != magic:
        return [], False
    frames: list[Frame] = []
    offset = len(magic)
    while offset < len(data):
        found, _ = _frame_at(data, offset)
        if found is None:
            return frames, False
        frames.append(found)
        offset += _FRAME.size + len(found.payload)
    return frames, True


def scan_file(path: Path, magic: bytes, first_lsn: int, *, tail_allowed: bool) -> FileScan:
    """Read every frame of ``path``; numbering must run on from ``first_lsn``.

    ``tail_allowed``: this is the last segment, where a torn tail may be cut off.
    Anything else that is wrong raises ``JournalCorrupt``.
    """
    data = path.read_bytes()
    scan = FileScan(path, size=len(data))
    if data[: len(magic)] != magic:
        if tail_allowed and len(data) < len(magic) and magic.startswith(data):
            scan.torn_at, scan.torn_reason = 0, "file header cut short"
            return scan
        raise JournalCorrupt(path, 0, "not a GoLedger file of this kind (bad magic)")
    offset = len(magic)
    expected = first_lsn
    while offset < len(data):
        found, reason = _frame_at(data, offset)
        if found is not None and found.lsn != expected:
            raise JournalCorrupt(path, offset, f"frame {found.lsn} where frame {expected} was due")
        if found is None:
            later = _valid_frame_after(data, offset, expected - 1)
            if not tail_allowed or later is not None:
                where = "" if later is None else f" (a valid frame follows at offset {later})"
                raise JournalCorrupt(path, offset, reason + where)
            scan.torn_at, scan.torn_reason = offset, reason
            return scan
        scan.frames.append(found)
        offset += _FRAME.size + len(found.payload)
        expected += 1
    return scan


@dataclass(slots=True)
class Recovered:
    """What a data directory holds: the snapshot (if any) and the segments after it."""

    directory: Path
    snapshot: FileScan | None
    #: The number of the first segment the snapshot does not cover (1 without one).
    first_segment: int
    segments: list[FileScan]

    @property
    def torn(self) -> FileScan | None:
        last = self.segments[-1] if self.segments else None
        return last if last is not None and last.torn_at is not None else None

    #: The lsn of the last journal frame the snapshot covers (0 without one).
    snapshot_lsn: int = 0

    def frames(self) -> Iterator[Frame]:
        for segment in self.segments:
            yield from segment.frames

    @property
    def last_lsn(self) -> int:
        for segment in reversed(self.segments):
            if segment.frames:
                return segment.frames[-1].lsn
        return self.snapshot_lsn

    @property
    def entries(self) -> int:
        """Journal entries read after the snapshot."""
        return sum(len(segment.frames) or segment.frame_count for segment in self.segments)

    def release_frames(self) -> None:
        for scan in (self.snapshot, *self.segments):
            if scan is not None:
                scan.release_frames()

    @property
    def last_segment(self) -> int:
        """The segment to append to: the last one on disk, or the first after the snapshot."""
        return self.first_segment + max(len(self.segments) - 1, 0)


def _numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        match = pattern.fullmatch(path.name)
        if match is not None:
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_directory(directory: Path, snapshot_lsn_of: Callable[[Frame], int]) -> Recovered:
    """Scan a data directory: the newest snapshot and every segment it does not cover.

    ``snapshot_lsn_of`` reads, from a snapshot's first frame, the lsn it covers up to.
    """
    snapshots = _numbered(directory, _SNAPSHOT_NAME)
    snapshot: FileScan | None = None
    first_segment = 1
    snapshot_lsn = 0
    if snapshots:
        first_segment, path = snapshots[-1]
        snapshot = scan_file(path, SNAPSHOT_MAGIC, 1, tail_allowed=False)
        if not snapshot.frames:
            raise JournalCorrupt(path, len(SNAPSHOT_MAGIC), "a snapshot without its header")
        snapshot_lsn = snapshot_lsn_of(snapshot.frames[0])
    every = _numbered(directory, _SEGMENT_NAME)
    # Every segment is kept (the history); those before the snapshot are read, not replayed.
    for (number, path), (following, _) in itertools.pairwise(every):
        if following != number + 1:
            raise JournalCorrupt(path, 0, f"segment {number + 1} is missing")
    if every and every[0][0] != 1:
        raise JournalCorrupt(every[0][1], 0, "segment 1 is missing")
    if snapshot is not None and first_segment > 1 and (not every or every[-1][0] < first_segment - 1):
        raise JournalCorrupt(snapshot.path, 0, f"segment {first_segment - 1} is missing")
    segments = [(number, path) for number, path in every if number >= first_segment]
    scans = []
    expected = snapshot_lsn + 1
    for index, (_, path) in enumerate(segments):
        scan = scan_file(path, SEGMENT_MAGIC, expected, tail_allowed=index == len(segments) - 1)
        scans.append(scan)
        expected += len(scan.frames)
    return Recovered(directory, snapshot, first_segment, scans, snapshot_lsn)


#: The ledger's files hold balances and token digests: the owner alone may read them.
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


class DataDirectory:
    """Exclusive ownership of a data directory, through an OS file lock.

    Opened for writing (``create``), the directory is made ``DIRECTORY_MODE`` and every
    file in it ``FILE_MODE`` (files written by an older version included); new files
    are created with ``FILE_MODE``.
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if create:
            path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            os.chmod(path, DIRECTORY_MODE)
            for entry in path.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    os.chmod(entry, FILE_MODE)
        elif not path.is_dir():
            raise JournalError(f"The data directory {path} does not exist.")
        lock_path = path / "LOCK"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirLocked(
                    f"The data directory {path} is in use by another process (pid {owner}); "
                    "only one process may own it."
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1


def sync_directory(path: Path) -> None:
    """Make a file's creation, rename or removal in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(write: Callable[[int, memoryview], int], fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "the journal write made no progress")
        view = view[written:]


def write_snapshot(directory: Path, number: int, payloads: Iterable[bytes]) -> tuple[Path, int]:
    """Write ``snapshot-number`` atomically (temporary file, sync, rename); its path and size."""
    final = directory / snapshot_name(number)
    temporary = final.with_suffix(".tmp")
    try:
        size = _write_snapshot_file(temporary, payloads)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk must not fill up with attempts
        raise
    os.replace(temporary, final)
    sync_directory(directory)
    return final, size


def _write_snapshot_file(temporary: Path, payloads: Iterable[bytes]) -> int:
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    size = 0
    try:
        write_all(os.write, fd, SNAPSHOT_MAGIC)
        size += len(SNAPSHOT_MAGIC)
        buffered: list[bytes] = []
        pending = 0
        for lsn, payload in enumerate(payloads, start=1):
            data = frame(lsn, payload)
            buffered.append(data)
            pending += len(data)
            if pending >= 4 * 1024 * 1024:
                write_all(os.write, fd, b"".join(buffered))
                size += pending
                buffered, pending = [], 0
        write_all(os.write, fd, b"".join(buffered))
        size += pending
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def remove_before(directory: Path, number: int) -> list[Path]:
    """Delete the snapshots older than snapshot ``number`` (segments are the ledger's history:
    they stay)."""
    removed = []
    for found, path in _numbered(directory, _SNAPSHOT_NAME):
        if found < number:
            path.unlink()
            removed.append(path)
    for stale in directory.glob("snapshot-*.tmp"):
        stale.unlink()
        removed.append(stale)
    if removed:
        sync_directory(directory)
    return removed


def cut_torn_tail(scan: FileScan) -> None:
    """Truncate a segment at its torn tail, durably, and say so in the log."""
    if scan.torn_at is None:
        return
    keep = max(scan.torn_at, 0)
    with open(scan.path, "r+b") as handle:
        handle.truncate(keep)
        if keep == 0:
            handle.write(SEGMENT_MAGIC)
        handle.flush()
        os.fsync(handle.fileno())
    _log.warning(
        "journal %s: torn tail cut off at byte offset %d (%s; %d bytes dropped, never acknowledged)",
        scan.path,
        scan.torn_at,
        scan.torn_reason,
        scan.size - scan.torn_at,
    )
