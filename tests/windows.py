"""Making interleavings happen on purpose: two threads inside one critical section.

Under the GIL two threads released together still reach a short critical section
one after the other, so a race test that only starts threads at once rarely
catches a missing lock. The tests here widen the window from outside instead, with
nothing added to the hot path:

- ``WatchedLock`` stands in for a store's lock (the store driver swaps it in) and
  tells when a thread finds it taken and starts to wait;
- ``pausing(container, window, ...)`` copies a dict or a list into a subclass whose
  chosen methods call ``window.step()`` after they ran: the first thread to step
  pauses there, inside the critical section, until a second thread has either
  stepped too (the two met inside the window: the race happened) or is seen waiting
  at the watched lock (the lock kept it out), or has finished what it came to do.

``meet(window, holder, visitor)`` runs the pair: the holder first, the visitor once
the holder is paused. ``assert_excluded(lock, visit, state)`` is the short form for a
lock whose critical section has nothing to widen (one read, one assignment): while
this thread holds the lock, whatever ``visit`` does next must wait at the lock,
having changed nothing that ``state()`` shows.

Nothing here sleeps: every wait is on an event, bounded by ``JOIN_TIMEOUT_S``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from tests.threads import JOIN_TIMEOUT_S

T = TypeVar("T")
C = TypeVar("C")


class WatchedLock:
    """A ``threading.Lock`` that tells ``contended`` when a blocking ``acquire`` finds it taken.

    It can stand in for a plain lock or be the lock of a ``threading.Condition``.
    ``on_wait`` (set by a ``Window``) is called too, just before the wait starts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.contended = threading.Event()
        self.on_wait: Callable[[], None] | None = None
        #: Called in the acquiring thread each time the lock is taken without a wait.
        self.on_acquire: Callable[[], None] | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            if self.on_acquire is not None:
                self.on_acquire()
            return True
        if not blocking:
            return False
        self.contended.set()
        if self.on_wait is not None:
            self.on_wait()
        return self._lock.acquire(blocking=True, timeout=timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class WatchedReaderWriterLock:
    """Stands in for a ``readerwriterlock`` lock: the handles it generates tell ``contended``
    (and call ``on_wait``) when they find the lock taken.

    As the ``lock`` of ``assert_excluded`` it is taken on the test's side for writing, or
    for reading when ``test_reads`` (other readers then get in; writers wait).
    """

    def __init__(self, inner: Any, *, test_reads: bool = False) -> None:
        self._inner = inner
        self._test_reads = test_reads
        self._held: Any = None
        self.contended = threading.Event()
        self.on_wait: Callable[[], None] | None = None

    def gen_rlock(self) -> _WatchedHandle:
        return _WatchedHandle(self._inner.gen_rlock(), self)

    def gen_wlock(self) -> _WatchedHandle:
        return _WatchedHandle(self._inner.gen_wlock(), self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """The test's side: a handle of its own, kept until ``release``."""
        self._held = self._inner.gen_rlock() if self._test_reads else self._inner.gen_wlock()
        return bool(self._held.acquire(blocking=blocking, timeout=timeout))

    def release(self) -> None:
        self._held.release()
        self._held = None


class _WatchedHandle:
    """One handle of a ``WatchedReaderWriterLock``, used by one thread like the handle it wraps."""

    def __init__(self, handle: Any, watched: WatchedReaderWriterLock) -> None:
        self._handle = handle
        self._watched = watched

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._handle.acquire(blocking=False):
            return True
        if not blocking:
            return False
        self._watched.contended.set()
        if self._watched.on_wait is not None:
            self._watched.on_wait()
        return bool(self._handle.acquire(blocking=True, timeout=timeout))

    def release(self) -> None:
        self._handle.release()

    def locked(self) -> bool:
        return bool(self._handle.locked())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Window:
    """One widened critical section: the first thread to ``step`` pauses in it until
    another thread steps too, waits at ``lock``, or ``arrive`` is called.

    ``met`` tells whether a second thread stepped while the first was paused: two
    threads were inside the section at once, which the lock exists to prevent.
    """

    def __init__(self, lock: WatchedLock | None = None) -> None:
        self._mutex = threading.Lock()
        self._holder: int | None = None
        self._closed = False
        self.paused = threading.Event()
        self._arrived = threading.Event()
        self.met = False
        #: The visitor finished while the holder was still paused (it never had to wait).
        self.overtaken = False
        if lock is not None:
            lock.on_wait = self.arrive

    def step(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            if self._closed or self._holder == me:
                return
            if self._holder is None:
                self._holder = me
                pausing = True
            else:
                self.met = True
                pausing = False
        if not pausing:
            self._arrived.set()
            return
        self.paused.set()
        arrived = self._arrived.wait(JOIN_TIMEOUT_S)
        with self._mutex:
            self._closed = True
        if not arrived:
            raise AssertionError(f"nobody came to the widened window within {JOIN_TIMEOUT_S} s")

    def arrive(self) -> None:
        """A second thread is at the window's door (waiting at its lock) or went past it."""
        if self._holder is not None:
            self._arrived.set()

    def leave(self) -> None:
        """The visitor finished: if nothing had let the holder go on yet, it overtook it."""
        with self._mutex:
            if self._holder is not None and not self._closed and not self._arrived.is_set():
                self.overtaken = True
        self.arrive()


class Tap:
    """A stepper for ``pausing`` that only counts the steps, and calls ``first`` at the first.

    It marks a moment inside a store (``enter`` of ``assert_excluded``), or counts the
    touches of a structure (``state`` of ``assert_excluded``).
    """

    def __init__(self, first: Callable[[], None] | None = None) -> None:
        self.count = 0
        self._first = first

    def step(self) -> None:
        self.count += 1
        if self.count == 1 and self._first is not None:
            self._first()


def pausing(container: C, window: Window | Tap, *methods: str, iterating: bool = False) -> C:
    """A copy of ``container`` (a dict, an ``OrderedDict``, a list) whose ``methods`` call
    ``window.step()`` once they have run.

    ``iterating``: ``items()`` and iteration hand out the first element, step, then the
    rest, so that the window opens in the middle of a walk over the container.
    """
    base = type(container)
    namespace: dict[str, Any] = {}
    for name in methods:
        namespace[name] = _stepping(getattr(base, name), window)
    if iterating:

        def items(self: Any) -> Iterator[Any]:
            return _step_after_first(base.items(self), window)

        def iterate(self: Any) -> Iterator[Any]:
            return _step_after_first(base.__iter__(self), window)

        namespace["items"] = items
        namespace["__iter__"] = iterate
    widened = type(f"Pausing{base.__name__}", (base,), namespace)
    return widened(container)  # type: ignore[no-any-return]


def _stepping(method: Callable[..., Any], window: Window | Tap) -> Callable[..., Any]:
    def stepping(self: Any, *args: Any, **kwargs: Any) -> Any:
        value = method(self, *args, **kwargs)
        window.step()
        return value

    return stepping


def _step_after_first(iterable: Any, window: Window | Tap) -> Iterator[Any]:
    for index, item in enumerate(iterable):
        yield item
        if index == 0:
            window.step()


class _Thread(Generic[T]):
    """One thread of a race: its result or its error, joined within ``JOIN_TIMEOUT_S``."""

    def __init__(self, name: str, work: Callable[[], T], then: Callable[[], None] | None = None) -> None:
        self.result: T | None = None
        self.error: BaseException | None = None
        self._work = work
        self._then = then
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._work()
        except BaseException as error:
            self.error = error
        finally:
            if self._then is not None:
                self._then()

    def join(self) -> None:
        self.thread.join(JOIN_TIMEOUT_S)
        assert not self.thread.is_alive(), f"{self.thread.name} still runs after {JOIN_TIMEOUT_S} s"


def meet(
    window: Window, holder: Callable[[], T], visitor: Callable[[], object]
) -> tuple[T | BaseException, object]:
    """Run ``holder`` until it pauses in ``window``, then ``visitor``; both outcomes (a
    result, or the exception raised), once both have finished."""
    first = _Thread("holder", holder, then=window.arrive)
    if not window.paused.wait(JOIN_TIMEOUT_S):
        first.join()
        if first.error is not None:
            raise first.error
        raise AssertionError("the holder finished without reaching the widened window")
    second = _Thread("visitor", visitor, then=window.leave)
    first.join()
    second.join()
    return _outcome(first), _outcome(second)


def _outcome(thread: _Thread[T]) -> T | BaseException:
    if thread.error is not None:
        return thread.error
    return thread.result  # type: ignore[return-value]


def assert_excluded(
    lock: WatchedLock | WatchedReaderWriterLock,
    visit: Callable[[Callable[[], None]], object],
    state: Callable[[], object] = lambda: None,
) -> object:
    """Check that ``lock`` keeps a visitor out of its critical section; what ``visit`` returned.

    ``visit(enter)`` runs in another thread; when it calls ``enter()`` this thread takes
    ``lock`` and holds it. Whatever the visitor does next with what the lock guards must
    wait: it is seen waiting at the lock before it finishes, and ``state()`` (read while
    the lock is held) has not changed since ``enter``.
    """
    entering = threading.Event()
    entered = threading.Event()
    finished = threading.Event()
    moved = threading.Event()  # the visitor called enter(), waits at the lock, or finished

    def enter() -> None:
        entering.set()
        moved.set()
        if not entered.wait(JOIN_TIMEOUT_S):
            raise AssertionError("the test did not take the lock")

    def done() -> None:
        finished.set()
        moved.set()

    visitor = _Thread("visitor", lambda: visit(enter), then=done)
    held = False
    try:
        assert moved.wait(JOIN_TIMEOUT_S), "the visitor never called enter()"
        if not entering.is_set():
            visitor.join()
            raise AssertionError(f"the visitor finished without calling enter(): {visitor.error!r}")
        moved.clear()
        if finished.is_set():
            moved.set()
        assert lock.acquire(timeout=JOIN_TIMEOUT_S), "the lock stayed taken"
        held = True
        before = state()
        lock.on_wait = moved.set
        entered.set()
        assert moved.wait(JOIN_TIMEOUT_S), "the visitor neither waited at the lock nor finished"
        assert not finished.is_set(), (
            f"the visitor went through while the lock was held ({visitor.error or visitor.result!r})"
        )
        assert state() == before, "what the lock guards changed while it was held"
    finally:
        lock.on_wait = None
        entered.set()
        if held:
            lock.release()
        visitor.join()
    if visitor.error is not None:
        raise visitor.error
    return visitor.result
