"""An open-loop HTTP load generator: requests on a fixed schedule, latency from the schedule.

wrk sends a connection's next request only when the last answer has arrived, so a
server that stalls is sent less and its slow answers are undercounted (coordinated
omission). wrk2 fixes that with a schedule, but Debian does not ship it; this is
the same idea in Python, small enough for the rates the benchmarks need (a few
thousand requests per second from one core):

* ``connections`` keep-alive connections, each on its own thread, each with its
  own fixed schedule: one request every ``connections / rate`` seconds, the
  connections' schedules staggered evenly, so that together they offer ``rate``;
* a request whose time has come while its connection still waits for the last
  answer is sent as soon as that answer arrives, and its latency still counts from
  its **intended** time (what wrk2 does): a stall shows in the percentiles in full;
* the generator's own lateness (the actual send time minus the intended one, when
  the connection was free) is reported too (``send_lag``), so that a run the
  generator could not keep up with is visible: its p99 must stay well below the
  server's figures for them to mean anything.

The pool file and the requests are those of ``wrk_ledger.lua`` (``transfer``: 1-coin
transfers between random pool users; ``balance``: balance reads). Prints one line
``OPEN_LOOP_JSON {...}``; ``benchmarks/common.py`` runs it pinned to the client CPU.

Run: ``python -m benchmarks.open_loop URL POOL_FILE --mode transfer --rate 1500 --seconds 5``.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: How long one answer may take before the connection counts a timeout and reconnects.
ANSWER_TIMEOUT_S = 10.0


@dataclass
class _Tally:
    """One connection's figures (merged after the run; no lock while running)."""

    latencies_s: list[float] = field(default_factory=list)
    send_lags_s: list[float] = field(default_factory=list)
    errors: int = 0
    non_2xx: int = 0


def _request_bytes(mode: str, users: Sequence[tuple[str, str]], rng: random.Random, host: str) -> bytes:
    caller = rng.randrange(len(users))
    username, token = users[caller]
    if mode == "balance":
        line = f"GET /account/coins?username={username} HTTP/1.1"
    else:
        target = rng.randrange(len(users) - 1)
        target += target >= caller
        line = f"POST /account/coins/transfer?username={username}&to={users[target][0]}&amount=1 HTTP/1.1"
    return f"{line}\r\nHost: {host}\r\nAuthorization: {token}\r\nContent-Length: 0\r\n\r\n".encode()


def _read_answer(connection: socket.socket, buffer: bytearray) -> int:
    """Read one HTTP/1.1 answer (with ``Content-Length``) off the connection; its status."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    head = bytes(buffer[:end]).decode("latin-1")
    status = int(head[9:12])
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    total = end + 4 + length
    while len(buffer) < total:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        buffer += chunk
    del buffer[:total]
    return status


def _connect(host: str, port: int) -> socket.socket:
    connection = socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _drive(
    host: str,
    port: int,
    mode: str,
    users: Sequence[tuple[str, str]],
    first_s: float,
    interval_s: float,
    end_s: float,
    seed: int,
    tally: _Tally,
) -> None:
    """One connection's schedule: a request every ``interval_s`` from ``first_s`` until ``end_s``."""
    rng = random.Random(seed)
    host_header = f"{host}:{port}"
    connection = _connect(host, port)
    buffer = bytearray()
    intended_s = first_s
    try:
        while intended_s < end_s:
            payload = _request_bytes(mode, users, rng, host_header)
            now_s = time.perf_counter()
            if now_s < intended_s:
                time.sleep(intended_s - now_s)
                tally.send_lags_s.append(time.perf_counter() - intended_s)
            try:
                connection.sendall(payload)
                status = _read_answer(connection, buffer)
            except OSError:
                tally.errors += 1
                connection.close()
                buffer.clear()
                connection = _connect(host, port)
            else:
                tally.latencies_s.append(time.perf_counter() - intended_s)
                if not 200 <= status < 300:
                    tally.non_2xx += 1
            intended_s += interval_s
    finally:
        connection.close()


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(
    base_url: str, pool_file: Path, *, mode: str, rate: float, seconds: float, connections: int
) -> dict[str, float]:
    """Offer ``rate`` requests/s for ``seconds`` over ``connections``; the figures in ms."""
    host, port_text = base_url.removeprefix("http://").split(":")
    users = [tuple(line.split()[:2]) for line in pool_file.read_text().splitlines() if line.strip()]
    interval_s = connections / rate
    start_s = time.perf_counter() + 0.2  # every thread connected before the first send
    end_s = start_s + seconds
    tallies = [_Tally() for _ in range(connections)]
    threads = [
        threading.Thread(
            target=_drive,
            args=(host, int(port_text), mode, users, start_s + index * interval_s / connections),
            kwargs={"interval_s": interval_s, "end_s": end_s, "seed": index, "tally": tallies[index]},
            daemon=True,
        )
        for index in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 2 * ANSWER_TIMEOUT_S + 5)
    took_s = time.perf_counter() - start_s
    latencies = sorted(value for tally in tallies for value in tally.latencies_s)
    lags = sorted(value for tally in tallies for value in tally.send_lags_s)
    return {
        "offered_rps": rate,
        "requests": len(latencies),
        "achieved_rps": len(latencies) / took_s,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p90_ms": _percentile(latencies, 0.90) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
        "send_lag_p50_ms": _percentile(lags, 0.50) * 1000,
        "send_lag_p99_ms": _percentile(lags, 0.99) * 1000,
        "errors": sum(tally.errors for tally in tallies),
        "non_2xx": sum(tally.non_2xx for tally in tallies),
        "unfinished": sum(thread.is_alive() for thread in threads),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base_url", help="http://127.0.0.1:PORT")
    parser.add_argument("pool_file", type=Path, help="'username token' lines")
    parser.add_argument("--mode", choices=("transfer", "balance"), default="transfer")
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    figures = run(
        args.base_url,
        args.pool_file,
        mode=args.mode,
        rate=args.rate,
        seconds=args.seconds,
        connections=args.connections,
    )
    print("OPEN_LOOP_JSON " + json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
