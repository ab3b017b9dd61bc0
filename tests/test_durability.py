"""MockDB with a data directory: what was acknowledged is there after a restart.

These tests drive the store directly; tests/test_crash.py and
tests/test_durability_http.py drive the real server.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from app.auth import token_digest
from app.ledger.errors import (
    IdempotencyKeyReused,
    InsufficientFunds,
    LedgerError,
    StorageUnavailable,
)
from app.ledger.memory import MockDB
from app.ledger.memory.files import DataDirLocked, JournalCorrupt
from app.ledger.model import BatchItem, Deadline, HoldStatus, OperationType
from tests.drivers import MemoryDriver
from tests.threads import JOIN_TIMEOUT_S, run_together

NAMES = ("alice", "bob", "carol", "dave")


def _deadline() -> Deadline:
    return Deadline.after_ms(5000)


class FaultySync:
    """``os.fdatasync`` until armed; then every call fails like a full disk."""

    def __init__(self) -> None:
        self.armed = False
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.armed:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fdatasync(fd)


def _open(directory: Path, **options: Any) -> MockDB:
    return MockDB.open(directory, **options)


def _seed(store: MockDB, balance: int = 1000) -> None:
    for name in NAMES:
        store.create_account(name, token_digest(name), balance, deadline=_deadline())


def state_of(store: MockDB, hold_ids: list[str]) -> dict[str, Any]:
    """Everything a client can see of a ledger: the store's public reads, and its kept idempotency keys."""
    records = []
    cursor: str | None = None
    while True:
        page = store.audit_page(limit=500, cursor=cursor)
        records.extend(page.transactions)
        cursor = page.next_cursor
        if cursor is None:
            break
    histories = {name: store.history(name, limit=500, cursor=None).transactions for name in NAMES}
    return {
        "accounts": {name: store.account(name, deadline=_deadline()) for name in NAMES},
        "records": records,
        "histories": histories,
        "holds": {hold_id: store.get_hold(NAMES[0], hold_id, deadline=_deadline()) for hold_id in hold_ids},
        "keys": sorted(
            (username, key, fingerprint, repr(outcome))
            for username, key, fingerprint, _, outcome in MemoryDriver(store).kept_keys()
        ),
        # A clean close adds a checkpoint, which the next full verification confirms too.
        "verified": {
            name: value for name, value in store.verify().figures().items() if name != "checkpoints_checked"
        },
    }


def _random_work(store: MockDB, rng: random.Random, operations: int) -> list[str]:
    """A mix of every kind of change, failures included; the ids of holds made on alice."""
    hold_ids: list[str] = []
    for step in range(operations):
        caller, other = rng.sample(NAMES, 2)
        amount = rng.choice((1, 5, 50, 400, 5000))
        choice = rng.randrange(9)
        try:
            if choice == 0:
                store.deposit(caller, amount, deadline=_deadline())
            elif choice == 1:
                store.withdraw(caller, amount, deadline=_deadline())
            elif choice == 2:
                store.transfer(caller, other, amount, deadline=_deadline())
            elif choice == 3:
                store.transfer(caller, other, amount, deadline=_deadline(), expected_version=rng.randrange(3))
            elif choice == 4:
                items = [
                    BatchItem(OperationType.TRANSFER, amount, other),
                    BatchItem(OperationType.DEPOSIT, 3),
                ]
                store.batch(caller, items, atomic=rng.random() < 0.5, deadline=_deadline())
            elif choice == 5:
                key = f"key-{rng.randrange(20)}"
                store.idempotent(
                    caller,
                    key,
                    f"transfer:{other}:{amount}",
                    _deadline(),
                    lambda caller=caller, other=other, amount=amount: store.transfer(
                        caller, other, amount, deadline=_deadline()
                    ),
                )
            elif choice == 6:
                result = store.create_hold("alice", other, amount, timeout_s=3600, deadline=_deadline())
                hold_ids.append(result.hold.id)
            elif choice == 7 and hold_ids:
                store.capture_hold("alice", rng.choice(hold_ids), None, deadline=_deadline())
            elif choice == 8 and hold_ids:
                store.void_hold("alice", rng.choice(hold_ids), deadline=_deadline())
        except (LedgerError, IdempotencyKeyReused):
            pass  # failures are part of the mix: they are journaled too
        if step == operations // 2:
            store.create_account(
                f"late-{rng.randrange(10**9)}", token_digest("late"), 7, deadline=_deadline()
            )
    return hold_ids


@pytest.mark.parametrize("snapshot_midway", [False, True], ids=["journal-only", "snapshot-then-journal"])
def test_a_reopened_ledger_is_the_same_ledger(tmp_path: Path, snapshot_midway: bool) -> None:
    store = _open(tmp_path)
    _seed(store)
    rng = random.Random(5)
    hold_ids = _random_work(store, rng, 150)
    if snapshot_midway:
        store.snapshot()
    hold_ids += _random_work(store, rng, 150)
    before = state_of(store, hold_ids)
    store.close()

    reopened = _open(tmp_path)
    try:
        assert state_of(reopened, hold_ids) == before
        assert reopened.verify().ok
        # It goes on from where it was: the next record chains to the last one.
        after = reopened.deposit("bob", 1, deadline=_deadline())
        assert after.transaction.sequence == len(before["records"]) + 1
        assert after.transaction.previous_hash == before["records"][-1].hash
    finally:
        reopened.close()


def test_an_acknowledged_operation_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    """A copy of the directory taken right after each call (no close) holds that call."""
    store = _open(tmp_path / "live")
    _seed(store)
    try:
        for round_number in range(3):
            result = store.transfer("alice", "bob", 10 + round_number, deadline=_deadline())
            copy = tmp_path / f"copy-{round_number}"
            shutil.copytree(tmp_path / "live", copy, ignore=shutil.ignore_patterns("LOCK"))
            crashed = _open(copy)
            try:
                assert crashed.account("alice", deadline=_deadline()) == result.account
                assert crashed.audit_page(limit=500, cursor=None).transactions[-1] == result.transaction
            finally:
                crashed.close()
    finally:
        store.close()


def test_failed_operations_are_journaled_too(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _seed(store, balance=10)
    with pytest.raises(InsufficientFunds) as refused:
        store.withdraw("alice", 11, deadline=_deadline())
    store.close()
    reopened = _open(tmp_path)
    try:
        history = reopened.history("alice", limit=10, cursor=None).transactions
        assert history[0] == refused.value.transaction
        assert history[0].reason == "insufficient_funds"
    finally:
        reopened.close()


def test_idempotency_keys_survive_a_restart(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _seed(store, balance=100)
    first = store.idempotent(
        "alice",
        "pay-1",
        "fp-1",
        _deadline(),
        lambda: store.transfer("alice", "bob", 30, deadline=_deadline()),
    )
    refused = store.idempotent(
        "alice", "pay-2", "fp-2", _deadline(), lambda: store.withdraw("alice", 1000, deadline=_deadline())
    )
    store.close()

    reopened = _open(tmp_path)
    try:

        def must_not_run() -> Any:
            raise AssertionError("a replayed key must not run its operation again")

        again = reopened.idempotent("alice", "pay-1", "fp-1", _deadline(), must_not_run)
        assert again.replayed
        assert again.result == first.result
        refused_again = reopened.idempotent("alice", "pay-2", "fp-2", _deadline(), must_not_run)
        assert refused_again.replayed
        assert isinstance(refused_again.result, LedgerError)
        assert isinstance(refused.result, LedgerError)
        assert (refused_again.result.status, refused_again.result.code, refused_again.result.message) == (
            refused.result.status,
            refused.result.code,
            refused.result.message,
        )
        with pytest.raises(IdempotencyKeyReused):
            reopened.idempotent("alice", "pay-1", "other-parameters", _deadline(), must_not_run)
        assert reopened.account("alice", deadline=_deadline()).balance == 70
    finally:
        reopened.close()


def test_pending_holds_survive_and_expire_after_a_restart(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = _open(tmp_path, clock=lambda: now[0])
    _seed(store, balance=100)
    kept = store.create_hold("alice", "bob", 40, timeout_s=60, deadline=_deadline())
    lapsing = store.create_hold("alice", "carol", 10, timeout_s=5, deadline=_deadline())
    store.close()

    now[0] += 10  # past the second hold's expiry, not the first's
    reopened = _open(tmp_path, clock=lambda: now[0])
    try:
        assert reopened.get_hold("alice", kept.hold.id, deadline=_deadline()) == kept.hold
        assert reopened.get_hold("alice", lapsing.hold.id, deadline=_deadline()).status is HoldStatus.EXPIRED
        assert reopened.account("alice", deadline=_deadline()).held == 40
        captured = reopened.capture_hold("bob", kept.hold.id, 25, deadline=_deadline())
        assert captured.hold.status is HoldStatus.CAPTURED
        assert reopened.account("alice", deadline=_deadline()).balance == 75
        assert reopened.verify().ok
    finally:
        reopened.close()


def test_a_second_owner_is_refused(tmp_path: Path) -> None:
    store = _open(tmp_path)
    try:
        with pytest.raises(DataDirLocked, match=str(tmp_path)):
            _open(tmp_path)
    finally:
        store.close()
    _open(tmp_path).close()  # free once the first is closed


def test_a_full_disk_stops_writes_but_not_reads(tmp_path: Path) -> None:
    sync = FaultySync()
    store = _open(tmp_path, sync=sync)
    _seed(store, balance=100)
    acknowledged = store.transfer("alice", "bob", 10, deadline=_deadline())
    sync.armed = True

    with pytest.raises(StorageUnavailable) as lost:
        store.transfer("carol", "dave", 5, deadline=_deadline())
    assert lost.value.status == 503
    assert lost.value.headers["Retry-After"]
    health = store.health()
    assert not health.database

    # Reads of accounts whose state is on disk keep working...
    assert store.account("alice", deadline=_deadline()) == acknowledged.account
    assert store.account("bob", deadline=_deadline()).balance == 110
    # ...but the accounts the lost write touched are not shown in a state that may vanish.
    with pytest.raises(StorageUnavailable):
        store.account("carol", deadline=_deadline())
    # History shows only what is on disk.
    assert store.history("carol", limit=10, cursor=None).transactions[0].type == OperationType.OPEN

    # Every later write is refused before anything is applied (and not audited: it cannot be kept).
    records_before = store.stats().audit_records
    for attempt in (
        lambda: store.deposit("alice", 1, deadline=_deadline()),
        lambda: store.withdraw("alice", 1, deadline=_deadline()),
        lambda: store.batch(
            "alice", [BatchItem(OperationType.DEPOSIT, 1)], atomic=True, deadline=_deadline()
        ),
        lambda: store.create_hold("alice", "bob", 1, timeout_s=60, deadline=_deadline()),
        lambda: store.create_account("erin", token_digest("erin"), 0, deadline=_deadline()),
    ):
        with pytest.raises(StorageUnavailable, match="nothing was applied"):
            attempt()
    assert store.stats().audit_records == records_before
    assert store.account("alice", deadline=_deadline()) == acknowledged.account
    store.close()

    reopened = _open(tmp_path)
    try:
        assert reopened.account("alice", deadline=_deadline()) == acknowledged.account
        assert reopened.verify().ok
        assert reopened.deposit("alice", 1, deadline=_deadline()).account.balance == 91
    finally:
        reopened.close()


def test_concurrent_writers_lose_nothing_and_sync_at_most_once_each(tmp_path: Path) -> None:
    """Sixteen writers at once: every transfer is on disk, none needed a sync of its own twice.

    (That waiters share syncs is shown deterministically in test_journal.py.)
    """
    sync = FaultySync()
    store = _open(tmp_path, sync=sync)
    _seed(store, balance=10_000)
    syncs_before = sync.calls
    transfers_per_thread = 50

    def work(index: int) -> None:
        source, target = NAMES[index % 4], NAMES[(index + 1) % 4]
        for _ in range(transfers_per_thread):
            store.transfer(source, target, 1, deadline=_deadline())

    run_together([lambda index=index: work(index) for index in range(16)])
    total = 16 * transfers_per_thread
    assert store.verify().ok
    assert sync.calls - syncs_before <= total  # never more than one sync per operation
    store.close()
    reopened = _open(tmp_path)
    try:
        assert reopened.stats().audit_records == len(NAMES) + total
    finally:
        reopened.close()


def test_snapshots_under_concurrent_load_lose_nothing(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _seed(store, balance=10_000)
    done = threading.Event()
    snapshots: list[str] = []

    def snapshot_repeatedly() -> None:
        while not done.is_set():
            snapshots.append(store.snapshot().path)

    snapshotter = threading.Thread(target=snapshot_repeatedly)
    snapshotter.start()
    try:

        def work(index: int) -> None:
            for step in range(60):
                source, target = NAMES[(index + step) % 4], NAMES[(index + step + 1) % 4]
                store.transfer(source, target, 1 + step % 3, deadline=_deadline())

        run_together([lambda index=index: work(index) for index in range(8)])
    finally:
        done.set()
        snapshotter.join(JOIN_TIMEOUT_S)
    assert not snapshotter.is_alive()
    assert snapshots
    before = state_of(store, [])
    store.close()
    reopened = _open(tmp_path)
    try:
        assert state_of(reopened, []) == before
        assert reopened.stats().audit_records == len(NAMES) + 8 * 60
    finally:
        reopened.close()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len([name for name in names if name.startswith("snapshot-")]) == 1  # older ones compacted away


def test_the_journal_snapshots_itself_past_its_bound(tmp_path: Path) -> None:
    store = _open(tmp_path, snapshot_bytes=4000)
    _seed(store, balance=10_000)
    for _ in range(40):
        store.transfer("alice", "bob", 1, deadline=_deadline())
    thread = store.snapshot_thread
    assert thread is not None  # the bound was crossed: a snapshot was started
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive()
    before = state_of(store, [])
    store.close()
    assert any(path.name.startswith("snapshot-") for path in tmp_path.iterdir())
    assert (tmp_path / "journal-00000001.log").exists()  # the history stays; the snapshot holds state
    reopened = _open(tmp_path)
    try:
        assert reopened.recovery is not None
        assert reopened.recovery.first_segment > 1  # only the journal after the snapshot is replayed
        assert state_of(reopened, []) == before
    finally:
        reopened.close()


def test_a_damaged_snapshot_stops_the_start(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _seed(store)
    store.snapshot()
    store.close()
    snapshot = next(path for path in tmp_path.iterdir() if path.name.startswith("snapshot-"))
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x10
    snapshot.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match=snapshot.name):
        _open(tmp_path)


def test_an_edited_journal_breaks_the_chain_and_verify_says_so(tmp_path: Path) -> None:
    """Tampering that keeps the framing valid (the CRC recomputed) is caught by the hash chain."""
    from app.ledger.memory import files as journal_files

    store = _open(tmp_path)
    _seed(store)
    store.transfer("alice", "bob", 10, deadline=_deadline())
    store.close()
    segment = tmp_path / journal_files.segment_name(1)
    frames = journal_files.scan_file(segment, journal_files.SEGMENT_MAGIC, 1, tail_allowed=False).frames
    rebuilt = journal_files.SEGMENT_MAGIC + b"".join(
        journal_files.frame(
            found.lsn, found.payload.replace(b'"transfer","alice","bob",10,', b'"transfer","alice","bob",99,')
        )
        for found in frames
    )
    assert rebuilt != segment.read_bytes()
    segment.write_bytes(rebuilt)
    tampered = MockDB.open(tmp_path, read_only=True)
    try:
        report = tampered.verify()
        assert not report.ok
        assert any("hash" in problem for problem in report.problems)
        assert not tampered.health().audit_log
    finally:
        tampered.close()
    # A server started on it serves (the record is before its snapshot, so the boot-time
    # check of the journal after it passes); a full verification finds the edit and marks
    # the trail broken.
    started = MockDB.open(tmp_path)
    try:
        assert started.chain_check is not None
        started.chain_check.join(JOIN_TIMEOUT_S)
        assert not started.chain_check.is_alive()
        assert started.account("alice", deadline=_deadline()).balance == 990
        assert not started.verify().ok
        assert not started.health().audit_log
    finally:
        started.close()


def test_a_read_only_open_changes_nothing(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _seed(store)
    store.close()
    segment = max(tmp_path.glob("journal-*.log"))  # the last segment, the one writes go to
    segment.write_bytes(segment.read_bytes() + b"\x05\x00")  # a torn tail
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.name != "LOCK"}
    reader = MockDB.open(tmp_path, read_only=True)
    try:
        assert reader.recovery is not None
        assert reader.recovery.torn is not None
        assert reader.verify().ok
        with pytest.raises(StorageUnavailable):
            reader.deposit("alice", 1, deadline=_deadline())
    finally:
        reader.close()
    after = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.name != "LOCK"}
    assert after == before


def test_a_failed_automatic_snapshot_is_not_retried_on_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ledger.memory import files as journal_files

    attempts: list[int] = []

    def full_disk(*args: object) -> None:
        attempts.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_files, "write_snapshot", full_disk)
    store = _open(tmp_path, snapshot_bytes=2000)
    try:
        _seed(store, balance=10_000)
        for _ in range(20):
            store.transfer("alice", "bob", 1, deadline=_deadline())
            thread = store.snapshot_thread
            if thread is not None:
                thread.join(JOIN_TIMEOUT_S)
        assert attempts == [1]  # one attempt; the next waits SNAPSHOT_RETRY_S
        # The journal itself is unharmed: writes go on and survive a restart.
        assert store.transfer("alice", "bob", 1, deadline=_deadline()).account.balance == 10_000 - 21
    finally:
        store.close()
    reopened = _open(tmp_path)
    try:
        assert reopened.account("alice", deadline=_deadline()).balance == 10_000 - 21
        assert reopened.verify().ok
    finally:
        reopened.close()


def test_a_retry_waiting_on_a_key_is_not_answered_when_the_first_request_cannot_be_kept(
    tmp_path: Path,
) -> None:
    """The first request's outcome is journaled but its sync fails: a retry waiting on
    the same key must not be told it succeeded (it is refused like the first)."""
    gate = threading.Event()
    syncing = threading.Event()
    armed = [False]

    def sync(fd: int) -> None:
        if armed[0]:
            syncing.set()
            gate.wait(JOIN_TIMEOUT_S)
            raise OSError(errno.EIO, "Input/output error")
        os.fdatasync(fd)

    store = _open(tmp_path, sync=sync)
    _seed(store, balance=100)
    waiting = threading.Event()
    MemoryDriver(store).on_key_in_flight(waiting.set)  # the retry found the first request's key in flight
    outcomes: dict[str, object] = {}

    def send(name: str) -> None:
        try:
            outcomes[name] = store.idempotent(
                "alice",
                "pay-1",
                "fp",
                _deadline(),
                lambda: store.transfer("alice", "bob", 30, deadline=_deadline()),
            )
        except StorageUnavailable as error:
            outcomes[name] = error

    armed[0] = True
    first = threading.Thread(target=send, args=("first",))
    first.start()
    assert syncing.wait(JOIN_TIMEOUT_S)
    retry = threading.Thread(target=send, args=("retry",))
    retry.start()
    assert waiting.wait(JOIN_TIMEOUT_S)
    gate.set()
    for thread in (first, retry):
        thread.join(JOIN_TIMEOUT_S)
        assert not thread.is_alive()
    assert isinstance(outcomes["first"], StorageUnavailable)
    assert isinstance(outcomes["retry"], StorageUnavailable), outcomes["retry"]
    store.close()


def test_a_snapshot_that_fails_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ledger.memory import files as journal_files

    def half_written(temporary: Path, payloads: object) -> int:
        temporary.write_bytes(b"GOLEDGER-SNAP-01 half of it")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_files, "_write_snapshot_file", half_written)
    store = _open(tmp_path)
    try:
        _seed(store)
        with pytest.raises(OSError, match="No space left"):
            store.snapshot()
        assert not list(tmp_path.glob("*.tmp"))
        store.transfer("alice", "bob", 1, deadline=_deadline())  # the journal goes on
    finally:
        store.close()
    reopened = _open(tmp_path)
    try:
        assert reopened.account("bob", deadline=_deadline()).balance == 1001
    finally:
        reopened.close()


def test_a_closed_store_neither_snapshots_nor_writes(tmp_path: Path) -> None:
    """After close() the directory may already belong to a new owner: touch nothing."""
    store = _open(tmp_path)
    _seed(store)
    store.close()
    successor = _open(tmp_path)
    try:
        successor.transfer("alice", "bob", 500, deadline=_deadline())
        with pytest.raises(StorageUnavailable):
            store.snapshot()
        with pytest.raises(StorageUnavailable):
            store.deposit("alice", 1, deadline=_deadline())
    finally:
        successor.close()
    reopened = _open(tmp_path)
    try:
        assert reopened.account("alice", deadline=_deadline()).balance == 500
    finally:
        reopened.close()


def test_an_open_store_keeps_its_state_not_the_bytes_it_was_read_from(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _seed(store)
    store.snapshot()
    store.transfer("alice", "bob", 1, deadline=_deadline())
    # A copy while it runs (a clean close would snapshot again and leave no journal to replay).
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path, copy, ignore=shutil.ignore_patterns("LOCK", "copy"))
    store.close()
    reopened = _open(copy)
    try:
        recovered = reopened.recovery
        assert recovered is not None
        assert recovered.snapshot is not None
        assert recovered.snapshot.frames == []
        assert all(segment.frames == [] for segment in recovered.segments)
        assert recovered.entries == 1
    finally:
        reopened.close()


def test_after_a_disk_failure_a_due_hold_is_read_as_it_is(tmp_path: Path) -> None:
    now = [1_000_000.0]
    sync = FaultySync()
    store = _open(tmp_path, sync=sync, clock=lambda: now[0])
    try:
        _seed(store, balance=100)
        hold = store.create_hold("alice", "bob", 40, timeout_s=5, deadline=_deadline())
        sync.armed = True
        with pytest.raises(StorageUnavailable):
            store.deposit("carol", 1, deadline=_deadline())
        now[0] += 10  # the hold falls due, but its expiry can no longer be written
        assert store.account("alice", deadline=_deadline()).held == 40
        assert store.get_hold("bob", hold.hold.id, deadline=_deadline()).status is HoldStatus.PENDING
    finally:
        store.close()


def test_the_data_directory_is_the_owners_alone(tmp_path: Path) -> None:
    """Balances and token digests on disk: the directory 0700, every file in it 0600,
    files an older version left readable included."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    store = MockDB.open(data_dir)
    try:
        store.create_account("carol", token_digest("carol"), 5, deadline=Deadline.after_ms(2000))
        store.snapshot()
        store.deposit("carol", 1, deadline=Deadline.after_ms(2000))
    finally:
        store.close()
    for entry in data_dir.iterdir():
        entry.chmod(0o644)  # as an older version, or a careless copy, left them
    data_dir.chmod(0o755)
    MockDB.open(data_dir).close()
    assert data_dir.stat().st_mode & 0o777 == 0o700
    files = [entry for entry in data_dir.iterdir() if entry.is_file()]
    assert {entry.name.split("-")[0] for entry in files} >= {"LOCK", "journal", "snapshot"}
    assert {entry.name: entry.stat().st_mode & 0o777 for entry in files} == {
        entry.name: 0o600 for entry in files
    }
