"""Edges only a real HTTP server shows: short and chunked bodies, gunicorn's own
rejections, and what happens when the worker holding the memory ledger goes away."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from tests.servers import ROOT, free_port, gunicorn_command, gunicorn_server, server_env

pytestmark = pytest.mark.slow

ONE_MIB = 1024 * 1024
CHUNKED_DEPOSIT_BY_BRYAN = (
    b"POST /account/coins/add HTTP/1.1\r\nHost: x\r\nAuthorization: 2\r\nTransfer-Encoding: chunked\r\n"
)


def raw_exchange(base_url: str, request: bytes, *, half_close: bool = True) -> bytes:
    """Send raw bytes, optionally close our side, and read the whole answer."""
    host, port = base_url.removeprefix("http://").split(":")
    chunks = []
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        # A server that refuses a request early (413) answers and closes while the rest
        # of it is still being sent: what it answered is then what counts.
        try:
            connection.sendall(request)
            if half_close:
                connection.shutdown(socket.SHUT_WR)
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # the answer, if any, was read before the reset
    return b"".join(chunks)


def balance(base_url: str, name: str = "aaron", token: str = "1") -> int:
    response = requests.get(
        f"{base_url}/account/coins?username={name}", headers={"Authorization": token}, timeout=10
    )
    value: int = response.json()["balance"]
    return value


def chunked(body: bytes, chunk_size: int = 65536) -> bytes:
    pieces = [
        b"%x\r\n%s\r\n" % (len(body[i : i + chunk_size]), body[i : i + chunk_size])
        for i in range(0, len(body), chunk_size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


def test_a_body_cut_short_is_refused_and_applies_nothing() -> None:
    with gunicorn_server() as base_url:
        answer = raw_exchange(
            base_url,
            b"POST /account/coins/add HTTP/1.1\r\nHost: x\r\nAuthorization: 1\r\nContent-Length: 100\r\n"
            b"Connection: close\r\n\r\n"
            b'{"username":"aaron","amount":5}',
        )
        assert answer.startswith(b"HTTP/1.1 400")
        assert b'"invalid_json"' in answer
        assert balance(base_url) == 10_000


def test_a_chunked_body_over_the_limit_is_413_and_applies_nothing() -> None:
    body = b'{"username":"bryan","amount":1}' + b" " * (3 * ONE_MIB) + b"garbage"
    with gunicorn_server() as base_url:
        answer = raw_exchange(
            base_url,
            CHUNKED_DEPOSIT_BY_BRYAN + b"Content-Type: application/json\r\n\r\n" + chunked(body),
        )
        assert answer.startswith(b"HTTP/1.1 413")
        assert b'"payload_too_large"' in answer
        assert balance(base_url, "bryan", "2") == 10_000


def test_a_chunked_body_within_the_limit_is_read_whole() -> None:
    body = b'{"username":"bryan","amount":7,"pad":"' + b"x" * (ONE_MIB - 100) + b'"}'
    with gunicorn_server() as base_url:
        answer = raw_exchange(
            base_url,
            CHUNKED_DEPOSIT_BY_BRYAN + b"Connection: close\r\n\r\n" + chunked(body),
        )
        assert answer.startswith(b"HTTP/1.1 200")
        assert balance(base_url, "bryan", "2") == 10_007


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"GET /account/coins?username=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"414",
            b"request_line_too_large",
        ),
        (
            b"GET /system/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
            b"431",
            b"headers_too_large",
        ),
        (
            b"POST /account/coins/add HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"400",
            b"bad_request",
        ),
        (b"NONSENSE\r\n\r\n", b"400", b"bad_request"),
    ],
)
def test_requests_gunicorn_rejects_get_json_errors(request_bytes: bytes, status: bytes, code: bytes) -> None:
    with gunicorn_server() as base_url:
        answer = raw_exchange(base_url, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status)
    assert b"Content-Type: application/json" in head
    assert b"X-Content-Type-Options: nosniff" in head
    assert b'"error": "' + code + b'"' in body
    assert b"<html>" not in answer


def test_options_is_a_json_405() -> None:
    with gunicorn_server() as base_url:
        response = requests.options(f"{base_url}/account/coins", timeout=10)
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def worker_pids(master_pid: int) -> list[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def start_raw(**variables: str) -> subprocess.Popen[str]:
    port = free_port()
    process = subprocess.Popen(
        gunicorn_command(),
        cwd=ROOT,
        env=server_env(port, **variables),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # gunicorn logs this once the worker is booting
        if "Booting worker" in line:
            break
    requests.get(f"http://127.0.0.1:{port}/system/health", timeout=30)
    return process


@pytest.mark.parametrize("how", ["worker killed", "reload"])
def test_the_master_stops_rather_than_serve_an_empty_memory_ledger(how: str) -> None:
    process = start_raw()
    try:
        if how == "worker killed":
            [worker] = worker_pids(process.pid)
            os.kill(worker, signal.SIGKILL)
        else:
            process.send_signal(signal.SIGHUP)
        _, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 1
    assert "the memory store's ledger lived in that worker and is gone" in errors


@pytest.mark.parametrize(
    ("variable", "value"),
    [("GUNICORN_THREADS", "abc"), ("GUNICORN_THREADS", "0"), ("GUNICORN_WORKERS", "many")],
)
def test_bad_gunicorn_settings_name_the_variable(variable: str, value: str) -> None:
    result = subprocess.run(
        gunicorn_command(),
        cwd=ROOT,
        env=server_env(free_port(), **{variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"{variable} must be a whole number" in result.stderr
