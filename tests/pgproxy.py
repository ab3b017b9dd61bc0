"""A TCP proxy in front of PostgreSQL that can lose the answer to a COMMIT.

Used to show that an operation whose COMMIT went unanswered is neither retried
(it could be applied twice) nor reported as "nothing applied". Deterministic: the
cut happens when the server's answer to the marked message arrives (so the server
has run it, COMMIT included), never after a sleep.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.threads import JOIN_TIMEOUT_S


class CommitCutter:
    """Forwards connections to ``upstream``; ``arm(marker)`` drops the server's answer to
    the next client message that contains ``marker`` and cuts that connection. While
    ``outage`` is set, new connections are closed at once (the database is unreachable)."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._cut_pending: set[int] = set()  # ids of server sockets whose next answer is dropped
        self.outage = threading.Event()
        self.cut = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def arm(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker

    def close(self) -> None:
        self._listener.close()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self.outage.is_set():
                client.close()
                continue
            server = socket.create_connection(self._upstream)
            self._start(self._pump, client, server, True)
            self._start(self._pump, server, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if from_client and self._marker is not None and self._marker in data:
                        self._marker = None
                        self._cut_pending.add(id(sink))
                    drop = not from_client and id(source) in self._cut_pending
                if drop:  # the server ran the marked message: its answer is lost, the link cut
                    self.outage.set()
                    self.cut.set()
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
