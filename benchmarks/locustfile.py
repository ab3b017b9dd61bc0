"""Locust users for the HTTP benchmarks (not the realistic mix: see ``loadtests/``).

Settings come from the environment (``benchmarks/common.py`` sets them):

* ``BENCH_POOL``: file of ``username token`` lines;
* ``BENCH_MODE``: ``transfer`` (a 1-coin transfer to another random pool user) or
  ``balance``;
* ``BENCH_USER_RATE``: > 0 paces every user to that many requests per second
  (``constant_throughput``), so ``users * rate`` is the offered load; 0 sends the
  next request as soon as the answer arrives.

``FastHttpUser`` (geventhttpclient) keeps the load generator's own cost low.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from locust import FastHttpUser, constant, constant_throughput, task


def _pool() -> list[tuple[str, str]]:
    path = os.environ.get("BENCH_POOL")
    if not path:
        return [("nobody", "none"), ("noone", "none")]  # imported without settings (e.g. --help)
    pairs = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    return [(name, token) for name, token in pairs]


_POOL = _pool()
_MODE = os.environ.get("BENCH_MODE", "transfer")
_RATE = float(os.environ.get("BENCH_USER_RATE", "0") or 0)


class BenchUser(FastHttpUser):
    wait_time = constant_throughput(_RATE) if _RATE > 0 else constant(0)

    @task
    def one_request(self) -> None:
        caller, target = random.sample(range(len(_POOL)), 2)
        username, token = _POOL[caller]
        headers = {"Authorization": token}
        if _MODE == "balance":
            self.client.get(f"/account/coins?username={username}", headers=headers, name="balance")
        else:
            path = f"/account/coins/transfer?username={username}&to={_POOL[target][0]}&amount=1"
            self.client.post(path, headers=headers, name="transfer")
