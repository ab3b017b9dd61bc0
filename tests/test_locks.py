"""Every lock is load-bearing: each test here fails when the lock it names is taken out.

A lock-removal mutant (``python -m tests.lock_mutants``) replaces one ``with self._<lock>:``
of ``app/ledger`` by ``if True:``; for every one of them some test must fail. Threads
released together rarely meet inside a short critical section under the GIL, so these
tests make them meet on purpose (``tests/windows.py``): the structure inside the
section is wrapped from outside, through the store driver, so that the first thread
pauses inside until a second one has either come in too (the race happened: the test
sees its damage) or is seen waiting at the lock.

Two kinds of test:

- *races*: two requests meet in the window and the test checks what the contract
  promises (one key runs once, no count is lost, the chain stays linear, a snapshot
  restores exactly what was acknowledged);
- *exclusion* (``assert_excluded``), for sections whose work no other thread can tear
  under the GIL (one read, one assignment, one C-level heap push): while the test
  holds the lock, whatever a caller does next with what it guards waits at the lock.

Stores are built here (``MockDB``, journaled ones in ``tmp_path``) unless a test runs
on both stores through the ``driver`` fixture. Every wait is bounded (``JOIN_TIMEOUT_S``);
nothing sleeps.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.auth import token_digest
from app.ledger.audit import Verification
from app.ledger.counters import DurationHistogram
from app.ledger.errors import OperationTimeout, StorageUnavailable
from app.ledger.memory import MockDB
from app.ledger.memory import trail as trail_module
from app.ledger.memory.durability import SnapshotReport
from app.ledger.memory.journal import Journal
from app.ledger.model import BatchItem, Deadline, OperationResult, OperationType
from app.ledger.outcomes import Outcome
from app.ledger.records import RecordDraft
from app.ledger.store import Counts, Durations, LedgerStore
from tests.drivers import MemoryDriver, StoreDriver, memory_driver
from tests.stores import open_account
from tests.threads import switching_often
from tests.windows import Tap, WatchedLock, Window, assert_excluded, meet, pausing


def patient() -> Deadline:
    return Deadline.after_ms(10_000)


@pytest.fixture(autouse=True)
def interleaved() -> Iterator[None]:
    """Racers switch every microsecond; the windows make them meet, this makes the rest mix."""
    with switching_often():
        yield


@pytest.fixture
def ledger() -> Iterator[MockDB]:
    store = MockDB()
    yield store
    store.close()


class Disk:
    """The journal's ``write`` system call, with a hook the test sets to run inside it."""

    def __init__(self) -> None:
        self.during_write: Callable[[], None] | None = None

    def write(self, fd: int, data: memoryview) -> int:
        hook, self.during_write = self.during_write, None
        if hook is not None:
            hook()
        return os.write(fd, data)


@pytest.fixture
def disk() -> Disk:
    return Disk()


@pytest.fixture
def journaled(tmp_path: Path, disk: Disk) -> Iterator[MockDB]:
    store = MockDB.open(tmp_path / "data", write=disk.write)
    open_account(store, "aaron", 1_000)
    yield store
    store.close()


def deposit(store: LedgerStore, amount: int = 1, deadline_ms: int = 10_000) -> OperationResult:
    return store.deposit("aaron", amount, deadline=Deadline.after_ms(deadline_ms))


def timed_out_deposit(store: LedgerStore) -> OperationTimeout:
    """A deposit that cannot get the write lock in time: its FAILED record is appended
    without the write lock (the only append that is)."""
    with pytest.raises(OperationTimeout) as caught:
        deposit(store, deadline_ms=1)
    return caught.value


# -- races: two requests meet inside the window --------------------------------------------


@pytest.mark.memory_only
def test_concurrent_claims_of_one_key_run_the_operation_once(ledger: MockDB) -> None:
    open_account(ledger, "aaron", 0)
    driver = memory_driver(ledger)
    window = Window(driver.watch("keys"))
    driver.widen("key_table", window, "get")  # the claim pauses between its lookup and its insert
    runs: list[int] = []

    def claim() -> Outcome:
        def operation() -> OperationResult:
            runs.append(1)
            return deposit(ledger, 5)

        return ledger.idempotent("aaron", "pay-1", "fingerprint", patient(), operation)

    first, second = meet(window, claim, claim)
    assert runs == [1], "two requests with one key both ran the operation"
    assert isinstance(first, Outcome)
    assert isinstance(second, Outcome)
    assert (first.replayed, second.replayed) == (False, True)
    assert ledger.account("aaron", deadline=patient()).balance == 5


def test_concurrent_counts_of_one_operation_lose_none(store: LedgerStore, driver: StoreDriver) -> None:
    open_account(store, "aaron", 0)
    window = Window(driver.watch("counters"))
    driver.widen("counters", window, "get")  # a count pauses between reading and writing back
    meet(window, lambda: deposit(store), lambda: deposit(store))
    assert store.counts().operations[("deposit", "success")] == 2


def test_concurrent_counts_of_two_batches_lose_none(store: LedgerStore, driver: StoreDriver) -> None:
    open_account(store, "aaron", 0)
    items = [BatchItem(OperationType.DEPOSIT, 1), BatchItem(OperationType.DEPOSIT, 2)]

    def batch() -> object:
        return store.batch("aaron", items, atomic=False, deadline=Deadline.after_ms(10_000))

    window = Window(driver.watch("counters"))
    driver.widen("counters", window, "get")  # a batch's count pauses between reading and writing back
    meet(window, batch, batch)
    assert store.counts().operations[("deposit", "success")] == 4


def test_a_metrics_scrape_never_sees_half_a_count(store: LedgerStore, driver: StoreDriver) -> None:
    open_account(store, "aaron", 0)
    window = Window(driver.watch("counters"))
    driver.widen("counters", window, "__setitem__")  # a count pauses with its operation counted,
    # its lock wait not yet: a scrape in between would see one without the other
    _, scraped = meet(window, lambda: deposit(store), store.counts)
    assert isinstance(scraped, Counts), scraped
    assert sum(scraped.operations.values()) == scraped.lock_wait.buckets[-1], "a scrape saw half a count"
    counts = store.counts()
    assert sum(counts.operations.values()) == counts.lock_wait.buckets[-1]


def watched_histogram(window_methods: tuple[str, ...]) -> tuple[DurationHistogram, Window]:
    """A latency histogram whose lock is watched and whose bucket list pauses after
    ``window_methods``."""
    histogram = DurationHistogram()
    lock = WatchedLock()
    window = Window(lock)
    histogram._lock = lock
    histogram._buckets = pausing(histogram._buckets, window, *window_methods)
    return histogram, window


def test_concurrent_observations_of_a_latency_histogram_lose_none() -> None:
    # An observation pauses between reading its bucket's count and writing it back.
    histogram, window = watched_histogram(("__getitem__",))
    meet(window, lambda: histogram.observe(0.002), lambda: histogram.observe(0.002))
    assert histogram.snapshot().buckets[-1] == 2, "an observation was lost"


def test_a_scrape_never_sees_half_an_observation() -> None:
    # An observation pauses with its bucket counted, its duration not yet in the sum.
    histogram, window = watched_histogram(("__setitem__",))
    _, scraped = meet(window, lambda: histogram.observe(0.002), histogram.snapshot)
    assert isinstance(scraped, Durations), scraped
    assert (scraped.buckets[-1], scraped.sum_s) == (1, 0.002), "a scrape saw half an observation"


@pytest.mark.memory_only
@pytest.mark.parametrize(
    ("holder", "list_method"),
    [
        ("deposit", "append"),  # one record: AuditTrail.append_one
        ("batch", "extend"),  # several: AuditTrail.append
    ],
)
def test_audit_appends_from_two_writers_keep_the_chain_linear(
    ledger: MockDB, holder: str, list_method: str
) -> None:
    open_account(ledger, "aaron", 0)
    driver = memory_driver(ledger)
    window = Window(driver.watch("trail"))
    # A deposit (or a batch) pauses with its records on the list and the chain's head not
    # yet moved on, holding the write lock; a deposit that times out on that lock appends
    # its FAILED record without it (the only append that does).
    driver.widen("audit_records", window, list_method)
    items = [BatchItem(OperationType.DEPOSIT, 1), BatchItem(OperationType.DEPOSIT, 2)]

    def hold() -> object:
        if holder == "deposit":
            return deposit(ledger)
        return ledger.batch("aaron", items, atomic=False, deadline=Deadline.after_ms(10_000))

    meet(window, hold, lambda: timed_out_deposit(ledger))
    records = ledger.audit_page(limit=10, cursor=None).transactions
    assert [record.sequence for record in records] == list(range(1, len(records) + 1))
    assert len(records) == (3 if holder == "deposit" else 4)
    assert all(later.previous_hash == earlier.hash for earlier, later in itertools.pairwise(records))
    assert ledger.verify().ok


@pytest.mark.memory_only
def test_a_snapshot_racing_a_writer_restores_exactly_what_was_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = MockDB.open(data)
    try:
        open_account(store, "aaron", 1_000)
        deposit(store)
        driver = memory_driver(store)
        window = Window(driver.watch("trail"))
        # The snapshot pauses in the middle of copying the trail's head (each account's
        # latest record, after it took the journal's position); a writer that timed out on
        # the write lock the snapshot holds appends its FAILED record meanwhile.
        driver.widen("audit_index", window, "copy")
        taken, refused = meet(window, store.snapshot, lambda: timed_out_deposit(store))
        assert not isinstance(taken, BaseException), taken
        assert isinstance(refused, OperationTimeout)
        acknowledged = store.audit_page(limit=10, cursor=None).transactions
    finally:
        store.close()
    reopened = MockDB.open(data)
    try:
        assert reopened.audit_page(limit=10, cursor=None).transactions == acknowledged
        assert reopened.verify().ok
    finally:
        reopened.close()


@pytest.mark.memory_only
def test_token_lookups_wait_for_an_account_being_created(ledger: MockDB) -> None:
    driver = memory_driver(ledger)
    window = Window(driver.watch("credentials"))
    driver.widen("credentials", window, "__setitem__")  # the creation pauses with the digest stored
    created, looked_up = meet(
        window,
        lambda: open_account(ledger, "aaron", 5, token="secret"),
        lambda: ledger.token_digest("aaron"),
    )
    assert created is None
    assert looked_up == token_digest("secret")
    assert not window.overtaken, "a token lookup went past an account being created"


@pytest.mark.memory_only
def test_a_key_table_walk_never_meets_a_key_being_added_or_dropped(ledger: MockDB) -> None:
    open_account(ledger, "aaron", 0)
    driver = memory_driver(ledger)
    parts = driver.parts()
    for number in range(3):
        parts.keys.restore("aaron", f"old-{number}", "fingerprint", time.time(), OperationTimeout("kept"))
    window = Window(driver.watch("keys"))
    driver.widen("key_table", window, iterating=True)  # a snapshot's walk pauses after one key

    def failing() -> OperationResult:
        raise OperationTimeout("applied nothing: the key is released")

    def add_and_drop() -> None:
        with pytest.raises(OperationTimeout):
            ledger.idempotent("aaron", "new", "fingerprint", patient(), failing)

    walked, _ = meet(window, parts.keys.kept, add_and_drop)
    assert not isinstance(walked, BaseException), f"the walk met a change: {walked!r}"
    assert len(walked) == 3  # type: ignore[arg-type]


# -- exclusion: what the lock guards waits while it is held --------------------------------


def call(function: Callable[[], object]) -> Callable[[Callable[[], None]], object]:
    """A visit that takes the lock's critical section straight away."""

    def visit(enter: Callable[[], None]) -> object:
        enter()
        return function()

    return visit


#: One call per method of a lock's owner: (the lock, what the method does through the driver).
EXCLUDED: dict[str, tuple[str, Callable[[MemoryDriver], object]]] = {
    "keys-len": ("keys", lambda driver: len(driver.parts().keys)),
    "keys-claim": ("keys", lambda driver: driver.parts().keys.run(
        "aaron", "k", "fp", patient(), lambda: driver.store.deposit("aaron", 1, deadline=patient())
    )),
    "keys-record": ("keys", lambda driver: driver.parts().keys.record("aaron", "k", OperationTimeout("x"))),
    "keys-restore": ("keys", lambda driver: driver.parts().keys.restore(
        "aaron", "k", "fp", 0.0, OperationTimeout("x")
    )),
    "keys-kept": ("keys", lambda driver: driver.parts().keys.kept()),
    "counters-count": ("counters", lambda driver: driver.parts().counters.count(
        [("deposit", "success")], 0.0
    )),
    "counters-count_one": ("counters", lambda driver: driver.parts().counters.count_one(
        "deposit", "success", 0.0
    )),
    "counters-count_tally": ("counters", lambda driver: driver.parts().counters.count_tally(
        {("deposit", "success"): 2}, 0.0
    )),
    "counters-aborted": ("counters", lambda driver: driver.parts().counters.aborted("deadlock")),
    "counters-aborts": ("counters", lambda driver: driver.parts().counters.aborts()),
    "counters-lock_trouble": ("counters", lambda driver: driver.parts().counters.lock_trouble()),
    "counters-performance_ok": ("counters", lambda driver: driver.parts().counters.performance_ok()),
    "counters-operation_count": ("counters", lambda driver: driver.parts().counters.operation_count()),
    "counters-snapshot": ("counters", lambda driver: driver.parts().counters.snapshot()),
    "trail-tip": ("trail", lambda driver: driver.parts().trail.tip()),
    "trail-append": ("trail", lambda driver: driver.parts().trail.append(_draft())),
    "trail-append_one": ("trail", lambda driver: driver.parts().trail.append_one(_draft()[0])),
    "trail-history": ("trail", lambda driver: driver.parts().trail.history("aaron", None, 10, None)),
    "trail-page": ("trail", lambda driver: driver.parts().trail.page(0, 10, None)),
    "trail-head": ("trail", lambda driver: driver.parts().trail.head(lambda: None)),
    "trail-read": ("trail", lambda driver: driver.parts().trail.read(1, 10)),
    "trail-entry": ("trail", lambda driver: driver.parts().trail.entry(1)),
    "trail-cached": ("trail", lambda driver: driver.parts().trail.cached()),
    "trail-verified": ("trail", lambda driver: driver.parts().trail.verified(
        Verification(problems=["broken"])
    )),
    "trail-problem": ("trail", lambda driver: driver.parts().trail.problem),
    "sweeper-schedule": ("sweeper", lambda driver: driver.parts().sweeper.schedule(10**12, "hold-1")),
    "sweeper-wake": ("sweeper", lambda driver: driver.parts().sweeper.wake()),
    "sweeper-stop": ("sweeper", lambda driver: driver.parts().sweeper.stop()),
    "credentials-token_digest": ("credentials", lambda driver: driver.store.token_digest("aaron")),
    "seen-stats": ("seen", lambda driver: driver.store.stats()),
}  # fmt: skip


def _draft() -> list[RecordDraft]:
    return [RecordDraft(OperationType.DEPOSIT, None, "aaron", 1)]


@pytest.mark.memory_only
@pytest.mark.parametrize("case", sorted(EXCLUDED))
def test_each_method_waits_for_its_lock(ledger: MockDB, case: str) -> None:
    open_account(ledger, "aaron", 0)
    driver = memory_driver(ledger)
    lock, method = EXCLUDED[case]
    assert_excluded(driver.watch(lock), call(lambda: method(driver)))


@pytest.mark.memory_only
def test_a_released_key_waits_for_the_table_lock(ledger: MockDB) -> None:
    open_account(ledger, "aaron", 0)
    driver = memory_driver(ledger)
    lock = driver.watch("keys")

    def visit(enter: Callable[[], None]) -> object:
        def timing_out() -> OperationResult:
            enter()  # the key is claimed; the test holds the table's lock from here on
            raise OperationTimeout("applied nothing")

        with pytest.raises(OperationTimeout):
            ledger.idempotent("aaron", "k", "fp", patient(), timing_out)
        return None

    assert_excluded(lock, visit)


@pytest.mark.memory_only
def test_a_health_probe_during_a_chain_check_waits_for_the_trail(ledger: MockDB) -> None:
    """While another chain check runs, a probe reports the known verdict, under the trail's lock."""
    open_account(ledger, "aaron", 0)
    driver = memory_driver(ledger)
    check_lock = driver.watch("chain_check")
    assert check_lock.acquire(timeout=10)  # a long chain check is under way
    try:
        assert_excluded(driver.watch("trail"), call(lambda: driver.parts().trail.check_new_records()))
    finally:
        check_lock.release()


@pytest.mark.memory_only
def test_a_chain_check_reads_the_trail_under_its_lock(ledger: MockDB) -> None:
    open_account(ledger, "aaron", 0)
    driver = memory_driver(ledger)
    check_lock = driver.watch("chain_check")
    trail_lock = driver.watch("trail")
    touches = Tap()
    driver.widen("audit_records", touches, "__getitem__")

    def visit(enter: Callable[[], None]) -> object:
        check_lock.on_acquire = enter  # once it is alone to check, the test takes the trail
        return driver.parts().trail.check_new_records(wait=True)

    assert_excluded(trail_lock, visit, lambda: touches.count)


@pytest.mark.memory_only
def test_a_chain_check_notes_its_progress_under_the_trail_lock(
    ledger: MockDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_account(ledger, "aaron", 0)
    driver = memory_driver(ledger)
    trail_lock = driver.watch("trail")
    entering: list[Callable[[], None]] = []
    check_chain = trail_module.check_chain

    def check_then_enter(*args: object) -> list[str]:
        problems = check_chain(*args)  # type: ignore[arg-type]
        entering.pop()()
        return problems

    monkeypatch.setattr(trail_module, "check_chain", check_then_enter)

    def visit(enter: Callable[[], None]) -> object:
        entering.append(enter)
        return driver.parts().trail.check_new_records(wait=True)

    assert_excluded(trail_lock, visit, driver.chain_checked)


@pytest.mark.memory_only
def test_an_account_being_created_stores_its_digest_under_the_credentials_lock(ledger: MockDB) -> None:
    driver = memory_driver(ledger)
    lock = driver.watch("credentials")

    def visit(enter: Callable[[], None]) -> object:
        driver.widen("accounts", Tap(enter), "__setitem__")  # the account is in; its digest comes next
        open_account(ledger, "aaron", 0)
        return None

    assert_excluded(lock, visit)


# -- the journal's condition ------------------------------------------------------------------

JOURNAL: dict[str, Callable[[Journal], object]] = {
    "failure": lambda journal: journal.failure,
    "appended_lsn": lambda journal: journal.appended_lsn,
    "durable_lsn": lambda journal: journal.durable_lsn,
    "durable_sequence": lambda journal: journal.durable_sequence,
    "counters": lambda journal: journal.counters(),
    "append": lambda journal: journal.append(b"{}", 99),
    "rotate": lambda journal: journal.rotate(),
    "wait_durable": lambda journal: journal.wait_durable(0),
    "fail": lambda journal: journal.fail("the test failed it"),
}


def _journal(store: MockDB) -> Journal:
    journal = memory_driver(store).parts().durability.journal
    assert journal is not None
    return journal


@pytest.mark.memory_only
@pytest.mark.parametrize("operation", sorted(JOURNAL))
def test_the_journal_waits_for_its_condition(journaled: MockDB, operation: str) -> None:
    driver = memory_driver(journaled)
    lock = driver.watch("journal")
    journal = _journal(journaled)

    def visit(enter: Callable[[], None]) -> object:
        enter()
        try:
            return JOURNAL[operation](journal)
        except StorageUnavailable:
            return None

    assert_excluded(lock, visit)


@pytest.mark.memory_only
def test_the_group_commit_leader_counts_its_sync_under_the_condition(journaled: MockDB, disk: Disk) -> None:
    driver = memory_driver(journaled)
    lock = driver.watch("journal")

    def visit(enter: Callable[[], None]) -> object:
        disk.during_write = enter  # the leader writes without the condition; the test takes it
        return deposit(journaled)

    assert_excluded(lock, visit, driver.journal_counters)


@pytest.mark.memory_only
def test_closing_the_journal_waits_for_its_condition(journaled: MockDB) -> None:
    driver = memory_driver(journaled)
    lock = driver.watch("journal")
    journal = _journal(journaled)

    def visit(enter: Callable[[], None]) -> object:
        wait_durable = journal.wait_durable

        def wait_then_enter(lsn: int) -> None:
            wait_durable(lsn)
            enter()  # what is queued is on disk; closing the segment comes next

        journal.wait_durable = wait_then_enter  # type: ignore[method-assign]
        journal.close()
        return None

    assert_excluded(lock, visit)


# -- snapshots ----------------------------------------------------------------------------------


@pytest.mark.memory_only
def test_a_second_snapshot_waits_for_the_first(journaled: MockDB) -> None:
    driver = memory_driver(journaled)
    assert_excluded(driver.watch("snapshot"), call(journaled.snapshot))


@pytest.mark.memory_only
def test_closing_waits_for_a_running_snapshot(tmp_path: Path) -> None:
    store = MockDB.open(tmp_path / "data")
    driver = memory_driver(store)
    assert_excluded(driver.watch("snapshot"), call(store.close))


def _failing_capture(before: Callable[[], None]) -> Callable[[], SnapshotReport]:
    """A background snapshot that fails (the work ``snapshot_in_background`` runs)."""

    def snapshot() -> SnapshotReport:
        before()
        raise OSError("the test's disk is full")

    return snapshot


@pytest.mark.memory_only
def test_a_background_snapshot_starts_under_the_starter_lock(journaled: MockDB) -> None:
    driver = memory_driver(journaled)
    lock = driver.watch("snapshot_starter")
    durability = driver.parts().durability
    assert_excluded(lock, call(lambda: durability.snapshot_in_background(_failing_capture(lambda: None))))
    thread = driver.background_snapshot_thread()
    assert thread is not None
    thread.join(10)


@pytest.mark.memory_only
def test_the_snapshot_thread_is_read_under_the_starter_lock(journaled: MockDB) -> None:
    driver = memory_driver(journaled)
    assert_excluded(driver.watch("snapshot_starter"), call(lambda: journaled.snapshot_thread))


@pytest.mark.memory_only
def test_a_failed_background_snapshot_notes_its_retry_under_the_starter_lock(journaled: MockDB) -> None:
    driver = memory_driver(journaled)
    lock = driver.watch("snapshot_starter")
    durability = driver.parts().durability

    def visit(enter: Callable[[], None]) -> object:
        durability.snapshot_in_background(_failing_capture(enter))
        thread = driver.background_snapshot_thread()
        assert thread is not None
        thread.join(10)
        return None

    assert_excluded(lock, visit, driver.snapshot_retry_at)


# -- the hold sweeper's condition ---------------------------------------------------------------


class SweeperClock:
    """The sweeper's wall clock: always "now is 1000", and after ``enter`` the next reading
    (the failed pass rescheduling its holds) ends the visit."""

    def __init__(self) -> None:
        self.rescheduled = Tap()
        self.armed = False

    def __call__(self) -> float:
        if self.armed:
            self.rescheduled.step()
        return 1000.0


@pytest.mark.memory_only
def test_a_failed_sweep_reschedules_its_holds_under_the_condition() -> None:
    clock = SweeperClock()
    store = MockDB(clock=clock)
    try:
        driver = memory_driver(store)
        lock = driver.watch("sweeper")
        sweeper = driver.parts().sweeper

        def visit(enter: Callable[[], None]) -> object:
            rescheduled = threading.Event()  # set by the clock once the failed pass reads it
            clock.rescheduled = Tap(rescheduled.set)

            def fail_after_entering(hold_ids: list[str]) -> None:
                enter()
                clock.armed = True
                raise RuntimeError("the test's sweep fails")

            driver.after_each_sweep(fail_after_entering)
            sweeper.schedule(0.0, "hold-1")  # due at once
            assert rescheduled.wait(10), "the failed pass never rescheduled"
            return None

        assert_excluded(lock, visit, driver.sweeper_heap)
    finally:
        store.close()


# -- MockDB._rw, the balances' reader-writer lock -------------------------------------------------


def _rw_operations(store: MockDB, driver: MemoryDriver) -> dict[str, Callable[[], object]]:
    return {
        "balance-read": lambda: store.account("aaron", deadline=patient()),
        "deposit": lambda: deposit(store),
        "batch": lambda: store.batch(
            "aaron", [BatchItem(OperationType.DEPOSIT, 1)], atomic=True, deadline=patient()
        ),
        "sweeper-pass": lambda: driver.sweep_due(["hold-1"]),
        "sweep-of-due-holds": lambda: store.sweep_expired(deadline=patient()),
        "is_empty": store.is_empty,
        "verify": store.verify,
        "health": store.health,
        "readiness": store.not_ready,
        "stats": store.stats,
    }


@pytest.mark.memory_only
@pytest.mark.parametrize(
    "operation",
    [
        "balance-read",
        "deposit",
        "batch",
        "sweeper-pass",
        "sweep-of-due-holds",
        "is_empty",
        "verify",
        "health",
        "readiness",
        "stats",
    ],
)
def test_every_reader_and_writer_waits_for_the_write_lock(ledger: MockDB, operation: str) -> None:
    open_account(ledger, "aaron", 0)
    driver = memory_driver(ledger)
    assert_excluded(driver.watch_balances(), call(_rw_operations(ledger, driver)[operation]))


@pytest.mark.memory_only
def test_a_snapshot_waits_for_the_write_lock(journaled: MockDB) -> None:
    driver = memory_driver(journaled)
    assert_excluded(driver.watch_balances(), call(journaled.snapshot))


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.mark.memory_only
def test_a_read_that_finds_a_due_hold_expires_it_under_the_write_lock() -> None:
    clock = Clock()
    store = MockDB(clock=clock)
    try:
        driver = memory_driver(store)
        driver.stop_sweeper()
        open_account(store, "aaron", 100)
        open_account(store, "bryan", 0)
        store.create_hold("aaron", "bryan", 10, timeout_s=60, deadline=patient())
        clock.now_s += 120
        # Readers share the lock with the test; the expiry the read defers to needs it alone.
        lock = driver.watch_balances(test_reads=True)
        assert_excluded(lock, call(lambda: store.account("aaron", deadline=patient())))
        assert store.account("aaron", deadline=patient()).available == 100
    finally:
        store.close()


@pytest.mark.memory_only
def test_two_reads_of_a_closed_journal_segment_open_it_once(tmp_path: Path) -> None:
    """``RecordArchive``'s table of open segment files: a read that finds a segment closed
    opens it under the table's lock, so a second read of it waits and shares that file
    (without the lock both would open it and one file would never be closed)."""
    data = tmp_path / "data"
    store = MockDB.open(data)
    try:
        open_account(store, "aaron", 0)
        deposit(store)
    finally:
        store.close()
    store = MockDB.open(data)  # a fresh start: no segment open for reading yet
    try:
        archive = store._durability.archive  # MockDB._durability.archive: its RecordArchive
        assert archive is not None
        lock = WatchedLock()
        archive._lock = lock  # RecordArchive._lock: guards its table of open segment files
        window = Window(lock)
        # A read pauses inside the table's critical section, having found no open file.
        archive._segments = pausing(archive._segments, window, "get")  # RecordArchive._segments
        first, second = meet(window, lambda: archive.read(1), lambda: archive.read(1))
        assert not window.met, "two reads were inside the table's critical section at once"
        assert first == second == store._trail.entry(1)  # MockDB._trail: its AuditTrail
        [(fd, readers)] = archive._segments.values()
        assert readers == 0
        segment = os.readlink(f"/proc/self/fd/{fd}")
        opened = [
            name for name in os.listdir("/proc/self/fd") if _points_at(f"/proc/self/fd/{name}", segment)
        ]
        assert opened == [str(fd)], "a segment file was opened twice"
    finally:
        store.close()


def _points_at(link: str, target: str) -> bool:
    try:
        return os.readlink(link) == target
    except OSError:  # the listing's own descriptor, closed by now
        return False
