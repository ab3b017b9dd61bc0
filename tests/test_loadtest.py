"""The locust load test: its conservation check, and real headless runs against gunicorn.

locust is only ever run in a subprocess: importing it here would monkey-patch this
pytest process with gevent. ``loadtests.conservation`` does not import locust.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.conservation import Outcome, Tally, check_conservation, outcome_of
from tests.servers import ROOT, gunicorn_server

LOCUST = Path(sys.executable).with_name("locust")
LOCUSTFILE = "loadtests/locustfile.py"
ADMIN_TOKEN = "loadtest-admin-token"
#: Locust's exit status for request failures, set apart from the check's status (1).
REQUEST_FAILURE_EXIT = 3
RUN_TIMEOUT_S = 120


# -- the check, without locust ----------------------------------------------------


def test_conserved_money_passes() -> None:
    balances = {"a": 900, "b": 1_300, "c": 0}
    # opening 3 x 700 = 2100, +500 deposited, -400 withdrawn: 2200
    assert check_conservation(balances, 2_100, 500, 400) == []


def test_a_wrong_figure_is_reported() -> None:
    balances = {"a": 900, "b": 1_300, "c": 0}
    problems = check_conservation(balances, 2_100, 501, 400)  # one deposit coin too many
    assert len(problems) == 1
    assert "sum of 3 balances is 2,200, expected 2,201" in problems[0]
    assert "off by -1" in problems[0]


def test_a_negative_balance_is_reported_even_when_the_sum_matches() -> None:
    problems = check_conservation({"a": -5, "b": 105}, 100, 0, 0)
    assert problems == ["account a has a negative balance: -5"]


def test_unknown_outcomes_widen_the_check_to_a_range() -> None:
    # opening 1000, +100 acked: 1100, plus a deposit of 50 that may or may not have landed
    assert check_conservation({"a": 1_100}, 1_000, 100, 0, uncertain_deposits=50) == []
    assert check_conservation({"a": 1_150}, 1_000, 100, 0, uncertain_deposits=50) == []
    assert check_conservation({"a": 1_151}, 1_000, 100, 0, uncertain_deposits=50) != []
    assert check_conservation({"a": 1_099}, 1_000, 100, 0, uncertain_deposits=50) != []
    # ... or a withdrawal of 10 that may or may not have landed
    assert check_conservation({"a": 1_090}, 1_000, 100, 0, uncertain_withdrawals=10) == []
    problems = check_conservation({"a": 1_089}, 1_000, 100, 0, uncertain_withdrawals=10)
    assert len(problems) == 1
    assert "between 1,090 and 1,100" in problems[0]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.APPLIED),
        (422, Outcome.NOT_APPLIED),
        (400, Outcome.NOT_APPLIED),
        (503, Outcome.NOT_APPLIED),
        (500, Outcome.NOT_APPLIED),
        (502, Outcome.UNKNOWN),
        (0, Outcome.UNKNOWN),
    ],
)
def test_outcome_of_a_status(status: int, outcome: Outcome) -> None:
    assert outcome_of(status) is outcome


def test_the_tally_counts_only_applied_money_and_keeps_unknowns_apart() -> None:
    tally = Tally()
    tally.record("deposit", 100, Outcome.APPLIED)
    tally.record("deposit", 7, Outcome.NOT_APPLIED)
    tally.record("withdrawal", 30, Outcome.APPLIED)
    tally.record("withdrawal", 11, Outcome.UNKNOWN)
    tally.record("transfer", 50, Outcome.APPLIED)
    assert (tally.deposits, tally.withdrawals, tally.transfer_count) == (100, 30, 1)
    assert (tally.uncertain_withdrawals, tally.uncertain_count) == (11, 1)
    tally.reset()
    assert tally == Tally()
    with pytest.raises(ValueError, match="unknown operation kind"):
        tally.record("refund", 1, Outcome.APPLIED)


# -- real runs: gunicorn + locust headless ----------------------------------------


def locust_env(**variables: str) -> dict[str, str]:
    """This environment without LEDGER_/LOCUST_ settings (locust reads LOCUST_* as options)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LEDGER_", "LOCUST_"))}
    env.update({"PYTHONUNBUFFERED": "1", "LOCUST_POOL_SIZE": "20"})
    env.update(variables)
    return env


def run_locust(
    host: str, *, run_time: str = "10s", locustfile: str = LOCUSTFILE, **variables: str
) -> subprocess.CompletedProcess[str]:
    command = [
        str(LOCUST),
        "-f",
        locustfile,
        "--headless",
        "-u",
        "20",
        "-r",
        "20",
        "-t",
        run_time,
        "--host",
        host,
        "--only-summary",
        "--exit-code-on-error",
        str(REQUEST_FAILURE_EXIT),
    ]
    return subprocess.run(
        command,
        cwd=ROOT,
        env=locust_env(**variables),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def ledger_url() -> Iterator[str]:
    with gunicorn_server(LEDGER_ADMIN_TOKEN=ADMIN_TOKEN) as base_url:
        yield base_url


@pytest.mark.slow
def test_a_load_run_conserves_money_without_failures(ledger_url: str) -> None:
    result = run_locust(ledger_url, LEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    output = result.stdout
    assert result.returncode == 0, f"locust exited {result.returncode}:\n{output[-6000:]}"
    assert "conservation OK: 20 accounts" in output, output[-6000:]
    assert "0 with unknown outcome" in output, output[-6000:]
    assert "conservation VIOLATED" not in output
    assert "Aggregated" in output  # the summary was printed, and the run did send requests
    assert "/account/coins/transfer" in output


@pytest.mark.slow
def test_a_conservation_violation_fails_the_locust_process(ledger_url: str, tmp_path: Path) -> None:
    """Count one deposit the server never saw: the check must fail the run with status 1."""
    skewed = tmp_path / "skewed_locustfile.py"
    skewed.write_text(
        "from locust import events\n"
        "from loadtests import locustfile as real\n"
        "from loadtests.locustfile import LedgerUser  # noqa: F401  (the user class locust runs)\n"
        "\n"
        "@events.test_stopping.add_listener\n"
        "def _skew(**_):\n"
        "    real._run.tally.deposits += 1\n"
    )
    result = run_locust(ledger_url, run_time="3s", locustfile=str(skewed), LEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    output = result.stdout
    assert result.returncode == 1, f"locust exited {result.returncode}:\n{output[-6000:]}"
    assert "conservation VIOLATED: sum of 20 balances" in output, output[-6000:]
    assert "off by -1" in output
    assert "conservation OK" not in output


@pytest.mark.slow
def test_a_wrong_admin_token_stops_the_run_clearly(ledger_url: str) -> None:
    result = run_locust(ledger_url, run_time="5s", LEDGER_ADMIN_TOKEN="not-the-admin-token")
    assert result.returncode == 1, result.stdout[-6000:]
    assert "cannot start the load test: POST /admin/accounts" in result.stdout
    assert "same LEDGER_ADMIN_TOKEN" in result.stdout


@pytest.mark.slow
def test_a_missing_admin_token_is_refused_before_any_request() -> None:
    # Port 9 (discard) on loopback: never contacted, the run must stop at start-up.
    result = run_locust("http://127.0.0.1:9", run_time="5s")
    assert result.returncode == 1, result.stdout[-6000:]
    assert "LEDGER_ADMIN_TOKEN is not set" in result.stdout
