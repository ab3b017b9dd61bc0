"""The embedded store with a data directory keeps state in memory, history on disk.

Records older than the cache are read back from the journal; pages are the same
before and after a restart and across evictions; memory stays flat as the history
grows; checkpoints make verification proportional to new records; tampering on disk
is found; an online backup is a ledger.
"""

from __future__ import annotations

import os
import random
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from app.auth import token_digest
from app.ledger import rules
from app.ledger.errors import InvalidInput, LedgerError
from app.ledger.memory import MockDB
from app.ledger.memory import files as journal_files
from app.ledger.memory.backup import backup
from app.ledger.memory.files import JournalError
from app.ledger.model import BatchItem, Deadline, HoldStatus, OperationType, Transaction
from tests.drivers import MemoryDriver
from tests.threads import JOIN_TIMEOUT_S

NAMES = ("alice", "bob", "carol", "dave", "erin")


def _deadline() -> Deadline:
    return Deadline.after_ms(10_000)


def _seed(store: MockDB, names: tuple[str, ...] = NAMES, balance: int = 10_000) -> None:
    for name in names:
        store.create_account(name, token_digest(name), balance, deadline=_deadline())


def _work(store: MockDB, rng: random.Random, operations: int) -> list[str]:
    """Transfers, refusals, batches and holds; the ids of the holds made."""
    holds: list[str] = []
    for _ in range(operations):
        payer, payee = rng.sample(NAMES, 2)
        choice = rng.random()
        try:
            if choice < 0.5:
                store.transfer(payer, payee, rng.randint(1, 300), deadline=_deadline())
            elif choice < 0.6:
                store.withdraw(payer, 10**9, deadline=_deadline())  # refused: a FAILED record
            elif choice < 0.75:
                count = rng.randint(1, 9)
                items = [BatchItem(OperationType.TRANSFER, rng.randint(1, 5), payee) for _ in range(count)]
                store.batch(payer, items, atomic=rng.random() < 0.5, deadline=_deadline())
            else:
                amount = rng.randint(1, 50)
                held = store.create_hold(payer, payee, amount, timeout_s=600, deadline=_deadline())
                holds.append(held.hold.id)
                if rng.random() < 0.5:
                    store.capture_hold(payee, held.hold.id, None, deadline=_deadline())
                elif rng.random() < 0.5:
                    store.void_hold(payer, held.hold.id, deadline=_deadline())
        except LedgerError:
            pass
    return holds


def _pages(store: MockDB, username: str, limit: int) -> list[tuple[tuple[Transaction, ...], str | None]]:
    pages = []
    cursor: str | None = None
    while True:
        page = store.history(username, limit=limit, cursor=cursor)
        pages.append((page.transactions, page.next_cursor))
        cursor = page.next_cursor
        if cursor is None:
            return pages


def _audit(store: MockDB, limit: int) -> list[Transaction]:
    records: list[Transaction] = []
    cursor: str | None = None
    while True:
        page = store.audit_page(limit=limit, cursor=cursor)
        records.extend(page.transactions)
        cursor = page.next_cursor
        if cursor is None:
            return records


def _everything(store: MockDB, holds: list[str]) -> dict[str, Any]:
    return {
        "history": {name: _pages(store, name, 7) for name in NAMES},
        "audit": _audit(store, 13),
        "accounts": {name: store.account(name, deadline=_deadline()) for name in NAMES},
        "holds": _hold_views(store, holds),
        "checkpoints": store.checkpoints(limit=500, cursor=None),
    }


def _hold_views(store: MockDB, holds: list[str]) -> dict[str, object]:
    """Each hold as one of its parties reads it."""
    views: dict[str, object] = {}
    for hold_id in holds:
        for name in NAMES:
            try:
                views[hold_id] = store.get_hold(name, hold_id, deadline=_deadline())
                break
            except LedgerError:
                continue
    return views


def test_a_restart_with_a_cache_smaller_than_the_history_serves_the_same_pages(tmp_path: Path) -> None:
    store = MockDB.open(tmp_path, record_cache=16, checkpoint_records=40)
    _seed(store)
    holds = _work(store, random.Random(7), 300)
    records, held = MemoryDriver(store).in_memory()
    assert records <= 16 + 64  # the cache, and at most one trimming step beyond it
    assert held < len(holds)  # resolved holds left memory
    before = _everything(store, holds)
    assert len(before["audit"]) == store.stats().audit_records
    assert store.verify().ok
    store.close()

    reopened = MockDB.open(tmp_path, record_cache=16, checkpoint_records=40)
    try:
        after = _everything(reopened, holds)
        assert after["checkpoints"].checkpoints[1:] == before["checkpoints"].checkpoints  # + the shutdown's
        assert {**after, "checkpoints": None} == {**before, "checkpoints": None}
        assert reopened.verify().ok
    finally:
        reopened.close()
    # A cache bigger than the history serves the same pages (read from memory after the start).
    bigger = MockDB.open(tmp_path, record_cache=100_000, checkpoint_records=40)
    try:
        assert {**_everything(bigger, holds), "checkpoints": None} == {**before, "checkpoints": None}
    finally:
        bigger.close()


def test_a_cursor_reads_the_same_page_after_its_records_left_the_cache(tmp_path: Path) -> None:
    store = MockDB.open(tmp_path, record_cache=8)
    try:
        _seed(store)
        _work(store, random.Random(3), 60)
        first = store.history("alice", limit=5, cursor=None)
        assert first.next_cursor is not None
        second = store.history("alice", limit=5, cursor=first.next_cursor)
        audit = store.audit_page(limit=20, cursor=None)
        _work(store, random.Random(4), 200)  # evicts everything the pages above came from
        assert store.history("alice", limit=5, cursor=first.next_cursor) == second
        assert store.audit_page(limit=20, cursor=None) == audit
        assert MemoryDriver(store).in_memory()[0] <= 8 + 64
    finally:
        store.close()


def test_a_cursor_that_is_not_one_of_the_accounts_records_is_refused(tmp_path: Path) -> None:
    store = MockDB.open(tmp_path, record_cache=4)
    try:
        _seed(store)
        store.transfer("alice", "bob", 1, deadline=_deadline())
        # Record 3 opened carol: not alice's.
        for cursor in (rules.encode_cursor("h", 3), rules.encode_cursor("h", 10**6)):
            with pytest.raises(InvalidInput) as raised:
                store.history("alice", limit=5, cursor=cursor)
            assert raised.value.code == "invalid_cursor"
    finally:
        store.close()


def test_memory_stays_flat_while_the_history_grows(tmp_path: Path) -> None:
    """100,000 audit records appended under a cache of 1,000: the heap grows by a few MB at most."""
    names = tuple(f"user{number:03d}" for number in range(100))
    store = MockDB.open(tmp_path, record_cache=1_000, checkpoint_records=20_000)
    try:
        _seed(store, names, balance=10**9)
        rng = random.Random(11)

        def batches(count: int) -> None:
            for _ in range(count):
                payer = rng.choice(names)
                items = [BatchItem(OperationType.TRANSFER, 1, rng.choice(names)) for _ in range(1_000)]
                items = [item for item in items if item.target != payer] or items[:0]
                if items:
                    store.batch(payer, items, atomic=False, deadline=_deadline())
                held = store.create_hold(payer, names[0] if payer != names[0] else names[1], 1, timeout_s=60,
                                         deadline=_deadline())  # fmt: skip
                store.void_hold(payer, held.hold.id, deadline=_deadline())

        batches(10)  # warm up: caches, the first snapshot, interned names
        thread = store.snapshot_thread
        if thread is not None:
            thread.join(JOIN_TIMEOUT_S)
        # The record index catches up in the background a chunk at a time: measure with no
        # chunk in flight (each catch_up returns with every durable record indexed).
        store._index.catch_up()
        tracemalloc.start()
        try:
            start_records = store.stats().audit_records
            before, _ = tracemalloc.get_traced_memory()
            batches(100)
            thread = store.snapshot_thread
            if thread is not None:
                thread.join(JOIN_TIMEOUT_S)
            store._index.catch_up()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert store.stats().audit_records - start_records >= 95_000
        growth = after - before
        assert growth < 4 * 1024 * 1024, f"the heap grew by {growth / 1e6:.1f} MB over 100K records"
        assert MemoryDriver(store).in_memory()[0] <= 1_000 + 1_200
        assert store.verify().ok
    finally:
        store.close()


def test_checkpoints_come_every_so_many_records_and_at_a_clean_shutdown(tmp_path: Path) -> None:
    store = MockDB.open(tmp_path, checkpoint_records=50)
    _seed(store)
    _work(store, random.Random(5), 120)
    thread = store.snapshot_thread
    assert thread is not None
    thread.join(JOIN_TIMEOUT_S)
    points = store.checkpoints(limit=500, cursor=None).checkpoints
    assert points
    assert [point.sequence for point in points] == sorted((point.sequence for point in points), reverse=True)
    for point in points:
        assert store.verify(from_sequence=point.sequence).ok
    last = store.stats().audit_records
    store.close()
    reopened = MockDB.open(tmp_path, checkpoint_records=50)
    try:
        newest = reopened.checkpoints(limit=1, cursor=None)
        assert newest.checkpoints[0].sequence == last  # the clean shutdown's
        assert newest.next_cursor is not None
        second = reopened.checkpoints(limit=1, cursor=newest.next_cursor).checkpoints[0]
        assert second == points[0] or second.sequence < last
        report = reopened.verify(from_sequence=last)
        assert report.ok
        assert report.records == 0
        full = reopened.verify()
        assert full.ok
        assert full.checkpoints == len(points) + (points[0].sequence != last)
        with pytest.raises(InvalidInput) as raised:
            reopened.verify(from_sequence=last - 1)
        assert raised.value.code == "invalid_parameter"
    finally:
        reopened.close()


def test_a_ledger_in_memory_checkpoints_too() -> None:
    store = MockDB(checkpoint_records=30)
    try:
        _seed(store)
        _work(store, random.Random(9), 60)
        thread = store.snapshot_thread
        assert thread is not None
        thread.join(JOIN_TIMEOUT_S)
        points = store.checkpoints(limit=50, cursor=None).checkpoints
        assert points
        for point in points:
            report = store.verify(from_sequence=point.sequence)
            assert report.ok, report.problems
        MemoryDriver(store).adjust("alice", balance=5)
        assert not store.verify(from_sequence=points[0].sequence).ok
        assert not store.verify().ok
    finally:
        store.close()


def _flip_amount(directory: Path, sequence: int) -> None:
    """Rewrite one record's amount inside its journal frame, the frame's checksum recomputed."""
    for segment in sorted(directory.glob("journal-*.log")):
        data = segment.read_bytes()
        marker = f'[{sequence},"tx_'.encode()
        at = data.find(marker)
        if at < 0:
            continue
        # The frame holding it: walk the frames from the start of the segment.
        offset = len(journal_files.SEGMENT_MAGIC)
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 4], "little")
            end = offset + journal_files.FRAME_HEADER_BYTES + length
            if offset < at < end:
                payload = data[offset + journal_files.FRAME_HEADER_BYTES : end]
                lsn = int.from_bytes(data[offset + 8 : offset + 16], "little")
                row_end = payload.index(b"]", at - offset - journal_files.FRAME_HEADER_BYTES)
                row = payload[at - offset - journal_files.FRAME_HEADER_BYTES : row_end]
                fields = row.split(b",")
                fields[5] = str(int(fields[5]) + 1).encode().rjust(len(fields[5]))  # same length
                edited = payload.replace(row, b",".join(fields), 1)
                segment.write_bytes(data[:offset] + journal_files.frame(lsn, edited) + data[end:])
                return
            offset = end
    raise AssertionError(f"record {sequence} not found on disk")


def test_a_record_edited_on_disk_is_found_by_a_full_verify_and_from_the_checkpoint_before_it(
    tmp_path: Path,
) -> None:
    store = MockDB.open(tmp_path, checkpoint_records=40, record_cache=16)
    _seed(store)
    _work(store, random.Random(21), 150)
    thread = store.snapshot_thread
    if thread is not None:
        thread.join(JOIN_TIMEOUT_S)
    store.close()
    reader = MockDB.open(tmp_path)
    points = sorted(point.sequence for point in reader.checkpoints(limit=500, cursor=None).checkpoints)
    transfers = [
        record.sequence
        for record in _audit(reader, 500)
        if record.type == OperationType.TRANSFER and points[0] < record.sequence < points[1]
    ]
    reader.close()
    assert len(points) >= 3
    assert transfers
    target = transfers[0]
    _flip_amount(tmp_path, target)

    tampered = MockDB.open(tmp_path)
    try:
        full = tampered.verify()
        assert not full.ok
        assert any(f"record {target}" in problem for problem in full.problems), full.problems
        before = tampered.verify(from_sequence=points[0])
        assert not before.ok
        assert any(f"record {target}" in problem for problem in before.problems), before.problems
        # A checkpoint after it checks only what follows: that stretch is intact.
        assert tampered.verify(from_sequence=points[1]).ok
    finally:
        tampered.close()


def test_an_online_backup_under_writes_is_a_ledger_with_every_acknowledged_operation(tmp_path: Path) -> None:
    source, copy = tmp_path / "live", tmp_path / "copy"
    store = MockDB.open(source, checkpoint_records=200, record_cache=32, snapshot_bytes=64 * 1024)
    _seed(store)
    stop = threading.Event()
    acknowledged: list[int] = []
    failures: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                payer, payee = rng.sample(NAMES, 2)
                try:
                    result = store.transfer(payer, payee, 1, deadline=_deadline())
                    acknowledged.append(result.transaction.sequence)
                except LedgerError:
                    pass
        except BaseException as error:  # reported by the test thread
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    try:
        # Let some history build up, with snapshots, before and during the copy.
        while len(acknowledged) < 500 and not failures:
            threading.Event().wait(0.01)
        before = max(acknowledged)
        report = backup(source, copy)
    finally:
        stop.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)
    assert not failures
    assert not any(thread.is_alive() for thread in threads)
    assert report.segments >= 1
    originals = {record.sequence: record for record in _audit(store, 500)}
    store.close()

    assert not (copy / "LOCK").exists() or os.path.getsize(copy / "LOCK") == 0
    restored = MockDB.open(copy)
    try:
        report_after = restored.verify()
        assert report_after.ok, report_after.problems
        records = _audit(restored, 500)
        assert len(records) >= before  # every operation acknowledged before the backup began
        assert all(originals[record.sequence] == record for record in records)  # a prefix of the ledger
    finally:
        restored.close()


def test_a_backup_goes_into_an_empty_directory_only(tmp_path: Path) -> None:
    store = MockDB.open(tmp_path / "live")
    store.close()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("x")
    with pytest.raises(JournalError, match="not empty"):
        backup(tmp_path / "live", tmp_path / "busy")
    with pytest.raises(JournalError, match="not a GoLedger data directory"):
        backup(tmp_path / "busy", tmp_path / "fresh")


def test_a_data_directory_of_the_previous_format_is_refused_with_a_reason(tmp_path: Path) -> None:
    from app.ledger.memory import persistence

    payloads = persistence.snapshot_payloads({"lsn": 0, "segment": 1, "records": 0}, [])
    journal_files.write_snapshot(tmp_path, 1, [payloads.__next__().replace(b'"format":3', b'"format":2')])
    with pytest.raises(JournalError, match="earlier version"):
        MockDB.open(tmp_path)


def test_resolved_holds_are_read_back_from_disk(tmp_path: Path) -> None:
    store = MockDB.open(tmp_path, record_cache=4)
    try:
        _seed(store)
        made = []
        for number in range(40):
            held = store.create_hold("alice", "bob", 1 + number, timeout_s=600, deadline=_deadline())
            if number % 2:
                store.capture_hold("bob", held.hold.id, None, deadline=_deadline())
            else:
                store.void_hold("alice", held.hold.id, deadline=_deadline())
            made.append(held.hold.id)
        pending = store.create_hold("alice", "carol", 5, timeout_s=600, deadline=_deadline())
        assert MemoryDriver(store).in_memory()[1] <= 3  # the pending one, and the last resolved ones
        for number, hold_id in enumerate(made):
            hold = store.get_hold("bob", hold_id, deadline=_deadline())
            assert hold.status is (HoldStatus.CAPTURED if number % 2 else HoldStatus.VOIDED)
            assert hold.amount == 1 + number
        from app.ledger.errors import HoldNotPending

        with pytest.raises(HoldNotPending):
            store.capture_hold("bob", made[0], None, deadline=_deadline())
        assert store.get_hold("alice", pending.hold.id, deadline=_deadline()).status is HoldStatus.PENDING
        assert store.verify().ok
    finally:
        store.close()


def test_the_backup_command_copies_a_data_directory_and_refuses_without_one(tmp_path: Path) -> None:
    from app import create_app

    live = tmp_path / "live"
    store = MockDB.open(live)
    _seed(store)
    store.close()
    app = create_app({"demo": False})  # the memory store without a data directory
    try:
        refused = app.test_cli_runner().invoke(args=["ledger", "backup", str(tmp_path / "nowhere")])
        assert refused.exit_code != 0
        assert "LEDGER_DATA_DIR" in refused.output
        taken = app.test_cli_runner().invoke(
            args=["ledger", "backup", "--data-dir", str(live), str(tmp_path / "copy")]
        )
        assert taken.exit_code == 0, taken.output
        assert taken.output.startswith(f"backup {tmp_path / 'copy'}: ")
        again = app.test_cli_runner().invoke(
            args=["ledger", "backup", "--data-dir", str(live), str(tmp_path / "copy")]
        )
        assert again.exit_code != 0
        assert "not empty" in again.output
    finally:
        from app.extensions import store as store_of

        store_of(app).close()
    restored = MockDB.open(tmp_path / "copy")
    try:
        assert restored.stats().accounts == len(NAMES)
        assert restored.verify().ok
    finally:
        restored.close()


def test_a_lost_index_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    store = MockDB.open(tmp_path, record_cache=8, checkpoint_records=30)
    _seed(store)
    holds = _work(store, random.Random(13), 80)
    before = _everything(store, holds)
    store.close()
    (tmp_path / "records.idx").unlink()
    (tmp_path / "holds.idx").unlink()
    reopened = MockDB.open(tmp_path, record_cache=8, checkpoint_records=30)
    try:
        after = _everything(reopened, holds)
        assert {**after, "checkpoints": None} == {**before, "checkpoints": None}
        assert reopened.verify().ok
    finally:
        reopened.close()


def test_snapshots_one_after_another_leave_every_segment_they_name(tmp_path: Path) -> None:
    """Two snapshots with no write between them, then a crash (a copy of the directory as
    it is): each snapshot starts a segment, and the start finds every one of them."""
    import shutil

    live, crashed = tmp_path / "live", tmp_path / "crashed"
    store = MockDB.open(live)
    try:
        _seed(store)
        store.snapshot()
        store.snapshot()
        shutil.copytree(live, crashed, ignore=shutil.ignore_patterns("LOCK"))
    finally:
        store.close()
    reopened = MockDB.open(crashed)
    try:
        assert reopened.stats().accounts == len(NAMES)
        assert reopened.verify().ok
    finally:
        reopened.close()


def test_reading_a_long_history_keeps_a_bounded_number_of_segments_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ledger.memory import archive

    monkeypatch.setattr(archive, "MAX_OPEN_SEGMENTS", 3)
    store = MockDB.open(tmp_path, checkpoint_records=20, record_cache=4)  # a segment every 20 records
    try:
        _seed(store)
        _work(store, random.Random(17), 150)
        segments = len(list(tmp_path.glob("journal-*.log")))
        assert segments > 6

        def open_segments() -> int:
            return sum(1 for fd in os.listdir("/proc/self/fd") if "journal-" in os.path.basename(_target(fd)))

        assert store.verify().ok
        for name in NAMES:
            _pages(store, name, 5)
        assert open_segments() <= 3 + 1  # the cap, and the segment the journal writes to
    finally:
        store.close()


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_a_damaged_checkpoint_file_keeps_its_intact_checkpoints(tmp_path: Path) -> None:
    from app.ledger.memory.checkpoints import CHECKPOINTS_FILE

    store = MockDB.open(tmp_path, checkpoint_records=20)
    _seed(store)
    _work(store, random.Random(19), 60)
    thread = store.snapshot_thread
    if thread is not None:
        thread.join(JOIN_TIMEOUT_S)
    store.close()
    path = tmp_path / CHECKPOINTS_FILE
    frames, _ = journal_files.valid_frames(path, b"GOLEDGER-CKPT-01")
    assert len(frames) >= 3
    # A retried append after a failed sync: the last frame written twice, then garbage.
    last = journal_files.frame(frames[-1].lsn, frames[-1].payload)
    path.write_bytes(path.read_bytes() + last + b"\x07garbage")
    reopened = MockDB.open(tmp_path, checkpoint_records=20)
    try:
        points = reopened.checkpoints(limit=500, cursor=None).checkpoints
        assert len(points) == len(frames)
        assert reopened.verify().ok
        assert reopened.verify(from_sequence=points[0].sequence).ok
    finally:
        reopened.close()


def _garble(directory: Path, sequence: int, replace: tuple[bytes, bytes]) -> None:
    """Edit bytes of one record's row inside its frame, the frame's checksum recomputed."""
    for segment in sorted(directory.glob("journal-*.log")):
        data = segment.read_bytes()
        at = data.find(f'[{sequence},"tx_'.encode())
        if at < 0:
            continue
        offset = len(journal_files.SEGMENT_MAGIC)
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 4], "little")
            end = offset + journal_files.FRAME_HEADER_BYTES + length
            if offset < at < end:
                start = offset + journal_files.FRAME_HEADER_BYTES
                payload = data[start:end]
                row_at = at - start
                row_end = payload.index(b"]]", row_at) + 2
                row = payload[row_at:row_end]
                edited = row.replace(*replace)
                assert edited != row
                assert len(edited) == len(row)  # offsets in the index stay right
                lsn = int.from_bytes(data[offset + 8 : offset + 16], "little")
                new_payload = payload[:row_at] + edited + payload[row_end:]
                segment.write_bytes(data[:offset] + journal_files.frame(lsn, new_payload) + data[end:])
                return
            offset = end
    raise AssertionError(f"record {sequence} not found on disk")


def test_a_row_that_cannot_be_read_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    store = MockDB.open(tmp_path, checkpoint_records=1000, record_cache=4)
    _seed(store)
    for _ in range(30):
        store.transfer("alice", "bob", 1, deadline=_deadline())
    store.close()
    _garble(tmp_path, 20, (b'"transfer",', b'"tr\x01nsfer",'))  # a control character: not JSON
    reopened = MockDB.open(tmp_path)
    try:
        report = reopened.verify()
        assert not report.ok
        assert any("after 19 cannot be read" in problem for problem in report.problems), report.problems
    finally:
        reopened.close()


def test_a_row_not_in_canonical_form_fails_even_with_a_hash_made_over_its_bytes(tmp_path: Path) -> None:
    """The hash covers the canonical encoding, not whatever bytes were stored: a last record
    rewritten with a space in it and its hash recomputed over those bytes is found."""
    import hashlib
    import shutil

    live, tmp_path = tmp_path / "live", tmp_path / "crashed"
    store = MockDB.open(live, checkpoint_records=1000, record_cache=4)
    try:
        _seed(store)
        for _ in range(30):
            store.transfer("alice", "bob", 1, deadline=_deadline())
        last = store.stats().audit_records
        previous = store.audit_page(limit=1, cursor=rules.encode_cursor("a", last - 2)).transactions[0]
        # As a crash leaves it: no snapshot, no checkpoint at the last record.
        shutil.copytree(live, tmp_path, ignore=shutil.ignore_patterns("LOCK"))
    finally:
        store.close()
    data = next(
        data
        for data in (path.read_bytes() for path in sorted(tmp_path.glob("journal-*.log")))
        if b'[%d,"tx_' % last in data
    )
    at = data.find(b'[%d,"tx_' % last)
    row_end = data.index(b"]]", at) + 2
    row = data[at:row_end]
    spaced = row.replace(b'[%d,"tx_0' % last, b'[%d, "tx_' % last, 1)  # a space in, a digit of the id out
    assert len(spaced) == len(row)
    prefix_end = spaced.index(b',"' + previous.hash.encode())
    forged = hashlib.sha256(previous.hash.encode() + spaced[:prefix_end] + b"]").hexdigest().encode()
    old_hash = spaced[prefix_end + 69 : prefix_end + 133]  # after ,"<previous hash>","
    edited = spaced.replace(old_hash, forged, 1)
    _garble(tmp_path, last, (row, edited))
    reopened = MockDB.open(tmp_path)
    try:
        report = reopened.verify()
        assert not report.ok
        assert any(f"record {last}" in problem and "hash" in problem for problem in report.problems), (
            report.problems
        )
    finally:
        reopened.close()
