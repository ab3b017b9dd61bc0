"""The journal's files: framing, group commit, torn tails, corruption, the directory lock."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ledger.audit import GENESIS_HASH, Replay
from app.ledger.memory import files as journal_files
from app.ledger.memory import persistence
from app.ledger.memory.files import (
    SEGMENT_MAGIC,
    DataDirectory,
    DataDirLocked,
    JournalCorrupt,
    JournalUnavailable,
    read_directory,
    segment_name,
)
from app.ledger.memory.journal import Journal
from app.ledger.model import OperationType, Tag, new_id, utc_now_iso
from app.ledger.records import RecordDraft, metadata_text
from tests.threads import JOIN_TIMEOUT_S


def _no_snapshot(frame: journal_files.Frame) -> int:
    raise AssertionError("no snapshot expected")


class CountingSync:
    """``os.fdatasync`` that counts its calls and can be made to fail or block."""

    def __init__(self) -> None:
        self.calls = 0
        self.failure: OSError | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(JOIN_TIMEOUT_S)
        if self.failure is not None:
            raise self.failure
        os.fdatasync(fd)


def _journal(directory: Path, sync: Callable[[int], None] | None = None, **options: float) -> Journal:
    return Journal(directory, 1, 0, 0, sync=sync, **options)  # type: ignore[arg-type]


def _write_frames(directory: Path, payloads: list[bytes]) -> None:
    journal = _journal(directory)
    for sequence, payload in enumerate(payloads, start=1):
        journal.append(payload, sequence)
    journal.close()


def _payloads(count: int) -> list[bytes]:
    return [f'{{"entry": {number}, "pad": "{"x" * number}"}}'.encode() for number in range(1, count + 1)]


def test_frames_read_back_in_order(tmp_path: Path) -> None:
    payloads = _payloads(5)
    _write_frames(tmp_path, payloads)
    recovered = read_directory(tmp_path, _no_snapshot)
    assert [found.payload for found in recovered.frames()] == payloads
    assert [found.lsn for found in recovered.frames()] == [1, 2, 3, 4, 5]
    assert recovered.torn is None
    assert recovered.last_lsn == 5


def test_waiters_share_one_sync(tmp_path: Path) -> None:
    """Frames queued before a sync all go out with it: one sync for many waiters."""
    sync = CountingSync()
    journal = _journal(tmp_path, sync)
    syncs_at_start = sync.calls  # creating the segment syncs its header
    lsns = [journal.append(payload, index) for index, payload in enumerate(_payloads(16), start=1)]
    waiters = [threading.Thread(target=journal.wait_durable, args=(lsn,)) for lsn in lsns]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join(JOIN_TIMEOUT_S)
    assert not any(waiter.is_alive() for waiter in waiters)
    assert sync.calls - syncs_at_start == 1
    assert journal.durable_lsn == 16
    assert journal.durable_sequence == 16
    journal.close()


def test_frames_queued_during_a_sync_go_out_with_the_next_one(tmp_path: Path) -> None:
    sync = CountingSync()
    journal = _journal(tmp_path, sync)
    syncs_at_start = sync.calls
    sync.gate = threading.Event()
    first = journal.append(b"{}", 1)
    leader = threading.Thread(target=journal.wait_durable, args=(first,))
    leader.start()
    assert sync.entered.wait(JOIN_TIMEOUT_S)  # the leader is inside its sync, the mutex free
    later = [journal.append(b"{}", sequence) for sequence in range(2, 10)]
    followers = [threading.Thread(target=journal.wait_durable, args=(lsn,)) for lsn in later]
    for follower in followers:
        follower.start()
    sync.gate.set()
    for thread in (leader, *followers):
        thread.join(JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in (leader, *followers))
    assert sync.calls - syncs_at_start == 2
    assert journal.durable_lsn == 9
    journal.close()


def test_a_failed_sync_fails_the_journal_for_good(tmp_path: Path) -> None:
    sync = CountingSync()
    journal = _journal(tmp_path, sync)
    durable = journal.append(b"{}", 1)
    journal.wait_durable(durable)
    sync.failure = OSError(errno.ENOSPC, "No space left on device")
    lost = journal.append(b"{}", 2)
    with pytest.raises(JournalUnavailable, match="No space left"):
        journal.wait_durable(lost)
    assert journal.failure is not None
    assert journal.durable_lsn == durable
    assert journal.durable_sequence == 1
    sync.failure = None  # the disk recovers: the journal stays failed all the same
    with pytest.raises(JournalUnavailable):
        journal.append(b"{}", 3)
    with pytest.raises(JournalUnavailable):
        journal.wait_durable(lost)
    journal.close()


def test_a_stalled_sync_fails_the_waiters(tmp_path: Path) -> None:
    sync = CountingSync()
    journal = _journal(tmp_path, sync, stall_timeout_s=0.2)
    sync.gate = threading.Event()  # the leader's sync will not return until released
    first = journal.append(b"{}", 1)
    leader_outcomes: list[str] = []

    def lead() -> None:
        try:
            journal.wait_durable(first)
            leader_outcomes.append("durable")
        except JournalUnavailable:
            leader_outcomes.append("unavailable")

    leader = threading.Thread(target=lead)
    leader.start()
    assert sync.entered.wait(JOIN_TIMEOUT_S)
    second = journal.append(b"{}", 2)
    with pytest.raises(JournalUnavailable, match=r"longer than 0\.2 s"):
        journal.wait_durable(second)
    sync.gate.set()
    leader.join(JOIN_TIMEOUT_S)
    assert not leader.is_alive()
    # The stalled frame is not acknowledged either, even though its sync returned at last.
    assert leader_outcomes == ["unavailable"]
    assert journal.failure is not None
    journal.close()


def _segment(directory: Path, number: int = 1) -> Path:
    return directory / segment_name(number)


def _frame_offsets(directory: Path) -> list[int]:
    return [found.offset for found in read_directory(directory, _no_snapshot).frames()]


@pytest.mark.parametrize(
    ("damage", "reason", "frames_kept"),
    [
        (lambda data: data + journal_files.frame(6, b'{"partial": true}')[:11], "frame header cut short", 5),
        (lambda data: data + journal_files.frame(6, b'{"partial": true}')[:-3], "frame cut short", 5),
        (lambda data: data + b"\0" * 4096, "checksum mismatch", 5),
        (lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), "checksum mismatch", 4),
    ],
    ids=["header-cut", "payload-cut", "zero-fill", "last-frame-flipped"],
)
def test_a_torn_tail_is_reported_and_cut(
    tmp_path: Path,
    damage: Callable[[bytes], bytes],
    reason: str,
    frames_kept: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    payloads = _payloads(5)
    _write_frames(tmp_path, payloads)
    path = _segment(tmp_path)
    intact = path.read_bytes()
    path.write_bytes(damage(intact))

    recovered = read_directory(tmp_path, _no_snapshot)
    torn = recovered.torn
    assert torn is not None
    assert torn.torn_reason == reason
    kept = [found.payload for found in recovered.frames()]
    assert kept == payloads[:frames_kept]

    journal_files.cut_torn_tail(torn)
    assert "torn tail cut off" in caplog.text
    again = read_directory(tmp_path, _no_snapshot)
    assert again.torn is None
    assert [found.payload for found in again.frames()] == kept
    # Appending goes on after the cut, numbered from the last kept frame.
    journal = Journal(tmp_path, 1, again.last_lsn, again.last_lsn)
    journal.wait_durable(journal.append(b'{"after": "restart"}', again.last_lsn + 1))
    journal.close()
    assert [found.payload for found in read_directory(tmp_path, _no_snapshot).frames()][-1] == (
        b'{"after": "restart"}'
    )


def test_damage_followed_by_valid_frames_is_corruption(tmp_path: Path) -> None:
    _write_frames(tmp_path, _payloads(5))
    offsets = _frame_offsets(tmp_path)
    path = _segment(tmp_path)
    data = bytearray(path.read_bytes())
    data[offsets[1] + 20] ^= 0x01  # a bit flip in the second frame's payload
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as raised:
        read_directory(tmp_path, _no_snapshot)
    assert raised.value.path == path
    assert raised.value.offset == offsets[1]
    assert f"corrupt at byte offset {offsets[1]}" in str(raised.value)
    assert "a valid frame follows" in str(raised.value)


def test_a_damaged_length_before_valid_frames_is_corruption(tmp_path: Path) -> None:
    """A huge length would look like a frame cut short; the valid frames after it say otherwise."""
    _write_frames(tmp_path, _payloads(5))
    offsets = _frame_offsets(tmp_path)
    path = _segment(tmp_path)
    data = bytearray(path.read_bytes())
    data[offsets[2] + 3] = 0x7F  # the length's high byte
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as raised:
        read_directory(tmp_path, _no_snapshot)
    assert raised.value.offset == offsets[2]


def test_damage_at_the_end_of_an_older_segment_is_corruption(tmp_path: Path) -> None:
    _write_frames(tmp_path, _payloads(3))
    first = _segment(tmp_path, 1)
    journal = Journal(tmp_path, 2, 3, 3)
    journal.wait_durable(journal.append(b"{}", 4))
    journal.close()
    first.write_bytes(first.read_bytes()[:-2])
    with pytest.raises(JournalCorrupt) as raised:
        read_directory(tmp_path, _no_snapshot)
    assert raised.value.path == first


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    _write_frames(tmp_path, _payloads(2))
    for number in (3,):
        journal = Journal(tmp_path, number, 2, 2)
        journal.wait_durable(journal.append(b"{}", 3))
        journal.close()
    with pytest.raises(JournalCorrupt, match="segment 2 is missing"):
        read_directory(tmp_path, _no_snapshot)


def test_a_gap_in_the_numbering_is_corruption(tmp_path: Path) -> None:
    _write_frames(tmp_path, _payloads(2))
    path = _segment(tmp_path)
    path.write_bytes(path.read_bytes() + journal_files.frame(4, b"{}"))
    with pytest.raises(JournalCorrupt, match="frame 4 where frame 3 was due"):
        read_directory(tmp_path, _no_snapshot)


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    _segment(tmp_path).write_bytes(b"PK\x03\x04 this is a zip file, not a journal" * 3)
    with pytest.raises(JournalCorrupt, match="bad magic"):
        read_directory(tmp_path, _no_snapshot)


def test_a_segment_torn_inside_its_header_is_a_torn_tail(tmp_path: Path) -> None:
    _segment(tmp_path).write_bytes(SEGMENT_MAGIC[:5])
    recovered = read_directory(tmp_path, _no_snapshot)
    assert recovered.torn is not None
    journal_files.cut_torn_tail(recovered.torn)
    assert _segment(tmp_path).read_bytes() == SEGMENT_MAGIC


def test_one_owner_per_directory_in_this_process(tmp_path: Path) -> None:
    owner = DataDirectory(tmp_path)
    with pytest.raises(DataDirLocked, match=f"in use by another process \\(pid {os.getpid()}\\)"):
        DataDirectory(tmp_path)
    owner.release()
    DataDirectory(tmp_path).release()  # free again once released


def test_one_owner_per_directory_across_processes(tmp_path: Path) -> None:
    owner = DataDirectory(tmp_path)
    try:
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from app.ledger.memory.files import DataDirectory; "
                "DataDirectory(Path(sys.argv[1]))",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=JOIN_TIMEOUT_S,
            cwd=Path(__file__).resolve().parent.parent,
        )
    finally:
        owner.release()
    assert probe.returncode != 0
    assert f"{tmp_path} is in use by another process (pid {os.getpid()})" in probe.stderr


def test_a_read_only_open_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(journal_files.JournalError, match="does not exist"):
        DataDirectory(tmp_path / "missing", create=False)


@pytest.mark.parametrize("damaged", [(1, 2), (2, 3, 4, 5, 6)], ids=["two-frames", "a-sector"])
def test_damage_over_several_frames_followed_by_valid_ones_is_corruption(
    tmp_path: Path, damaged: tuple[int, ...]
) -> None:
    """A bad sector spans several frames: the intact frames after it were acknowledged."""
    _write_frames(tmp_path, _payloads(10))
    offsets = _frame_offsets(tmp_path)
    path = _segment(tmp_path)
    data = bytearray(path.read_bytes())
    for index in damaged:
        data[offsets[index] + 20] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as raised:
        read_directory(tmp_path, _no_snapshot)
    assert raised.value.offset == offsets[damaged[0]]
    assert "a valid frame follows" in str(raised.value)


def test_a_later_frame_is_found_across_a_block_of_65536_numbers(tmp_path: Path) -> None:
    """Frame numbers past a 65,536 boundary still prove that damage is not a torn tail."""
    first = 65_530
    journal = Journal(tmp_path, 1, first - 1, first - 1)
    for sequence in range(first, first + 12):
        journal.append(b'{"n": 1}', sequence)
    journal.close()
    path = _segment(tmp_path)
    offsets = [
        found.offset
        for found in journal_files.scan_file(path, SEGMENT_MAGIC, first, tail_allowed=True).frames
    ]
    data = bytearray(path.read_bytes())
    for index in range(2, 8):  # frames 65532..65537: the next valid one is numbered 65538
        data[offsets[index] + 17] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="a valid frame follows"):
        journal_files.scan_file(path, SEGMENT_MAGIC, first, tail_allowed=True)


_NAMES = st.from_regex(r"[A-Za-z0-9_.@-]{1,64}", fullmatch=True)


@given(
    kind=st.sampled_from(list(OperationType)),
    source=st.none() | _NAMES,
    target=st.none() | _NAMES,
    amount=st.integers(min_value=0, max_value=2**63 - 1),
    reason=st.none() | st.from_regex(r"[a-z_]{1,64}", fullmatch=True),
    sequence=st.integers(min_value=1, max_value=10**18),
    links=st.lists(st.integers(min_value=0, max_value=10**18), max_size=2),
)
def test_a_journal_row_is_its_records_hashed_bytes_then_its_chain_and_parties(
    kind: OperationType,
    source: str | None,
    target: str | None,
    amount: int,
    reason: str | None,
    sequence: int,
    links: list[int],
) -> None:
    """A row is built from the encoding the hash covered, never encoded a second time: it
    must be exactly the row's JSON, and read back as the same record."""
    parties = tuple(name for name in (source, target) if name is not None)[: len(links)]
    draft = RecordDraft(kind, source, target, amount, reason)
    record, encoding = draft.seal_encoded("ab" * 32, sequence, new_id("tx_"), utc_now_iso())
    row = persistence.encoded_record_row(encoding, record, parties, links[: len(parties)])
    assert row == orjson.dumps(persistence.record_row(record, parties, links[: len(parties)]))
    assert row.startswith(encoding[:-1])
    assert persistence.record_from_row(orjson.loads(row)) == (record, list(parties))


# -- tags and the records written before them ------------------------------------------


def test_an_untagged_record_hashes_exactly_as_before_tags_existed() -> None:
    """Known answers from the version before references and metadata: records written
    then keep their hashes, so an older journal verifies unchanged."""
    first, encoding = RecordDraft(OperationType.TRANSFER, "aaron", "bryan", 100).seal_encoded(
        "0" * 64, 3, "tx_01a237ed2e4545e482156d81a750512b", "2026-12-02T18:03:40.485501Z"
    )
    assert encoding == (
        b'[3,"tx_01a237ed2e4545e482156d81a750512b","transfer","aaron","bryan",100,"SUCCESS",null,'
        b'"2026-12-02T18:03:40.485501Z"]'
    )
    assert first.hash == "6e92dfe9dfad9adb27514a374fdb8ddbc99bac2e79e71fcbe624f2cacafc01bc"
    failed = RecordDraft(OperationType.WITHDRAWAL, "aaron", None, 5, "insufficient_funds", ("aaron",))
    second, _ = failed.seal_encoded(
        first.hash, 4, "tx_01a237ed2e7c97a880c7726b30ab1f67", "2026-12-02T18:03:40.540016Z"
    )
    assert second.hash == "cf9a9229e2e215e8c8fd521feefb19e0a0323bd0504c2eaa61e69830757dfac1"
    assert (second.reference, second.metadata) == (None, None)


def test_a_tagged_record_hashes_its_reference_and_metadata_after_the_nine_fields() -> None:
    tag = Tag("order-42", metadata_text({"round": 7, "campaign": "spring"}))
    record, encoding = RecordDraft(OperationType.TRANSFER, "aaron", "bryan", 100, tag=tag).seal_encoded(
        GENESIS_HASH, 1, "tx_01a237ed2e4545e482156d81a750512b", "2026-12-02T18:03:40.485501Z"
    )
    assert encoding.endswith(b',"2026-12-02T18:03:40.485501Z","order-42",{"campaign":"spring","round":7}]')
    assert record.hash == hashlib.sha256(GENESIS_HASH.encode() + encoding).hexdigest()
    row = persistence.encoded_record_row(encoding, record, ("aaron", "bryan"), (0, 0))
    assert persistence.record_from_row(orjson.loads(row)) == (record, ["aaron", "bryan"])
    for tampered, problems in (
        (row, []),
        (
            row.replace(b'"order-42"', b'"order-43"'),
            ["record 1 (tx_01a237ed2e4545e482156d81a750512b) does not match its hash"],
        ),
        (
            row.replace(b'"round":7', b'"round":8'),
            ["record 1 (tx_01a237ed2e4545e482156d81a750512b) does not match its hash"],
        ),
    ):
        replay = Replay()
        replay.add_encoded_rows([tampered])
        assert replay.report.problems == problems
