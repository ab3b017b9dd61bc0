"""The locust load tests: their invariant checks, real headless runs of every scenario, the charts.

locust is only ever run in a subprocess: importing it here would monkey-patch this
pytest process with gevent. ``loadtests.conservation`` and ``loadtests.plot`` do not
import locust.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.conservation import (
    Book,
    HoldNote,
    Outcome,
    check_conservation,
    check_debit_chain,
    check_payouts,
    check_received,
    fee_of,
    outcome_of,
)
from loadtests.plot import main as plot_main
from tests.servers import ROOT, gunicorn_server

LOCUST = Path(sys.executable).with_name("locust")
LOCUSTFILE = "loadtests/locustfile.py"
ADMIN_TOKEN = "loadtest-admin-token"
#: Locust's exit status for request failures, set apart from the checks' status (1).
REQUEST_FAILURE_EXIT = 3
RUN_TIMEOUT_S = 120
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- the checks, without locust -------------------------------------------------------


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
        (201, Outcome.APPLIED),
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


def opened_book(**balances: int) -> Book:
    book = Book()
    for username, balance in balances.items():
        book.open_account(username, balance)
    return book


def test_the_book_counts_only_applied_money_and_keeps_unknowns_apart() -> None:
    book = opened_book(a=1_000, b=500)
    book.record("deposit", "a", 100, Outcome.APPLIED)
    book.record("deposit", "a", 7, Outcome.NOT_APPLIED)
    book.record("withdrawal", "b", 30, Outcome.APPLIED)
    book.record("withdrawal", "b", 11, Outcome.UNKNOWN)
    book.record("transfer", "a", 50, Outcome.APPLIED, to="b")
    assert (book.deposits, book.withdrawals, book.acked["transfer"]) == (100, 30, 1)
    assert (book.uncertain_withdrawals, book.uncertain_count) == (11, 1)
    assert book.expected == {"a": 1_050, "b": 520}
    # b may or may not have lost the 11 coins of the unanswered withdrawal
    assert book.check_accounts({"a": 1_050, "b": 520}) == []
    assert book.check_accounts({"a": 1_050, "b": 509}) == []
    assert book.check_sum({"a": 1_050, "b": 509}) == []
    with pytest.raises(ValueError, match="unknown operation kind"):
        book.record("refund", "a", 1, Outcome.APPLIED)
    with pytest.raises(ValueError, match="needs"):
        book.record("transfer", "a", 1, Outcome.APPLIED)


def test_a_coin_in_the_wrong_account_breaks_the_account_check_but_not_the_sum() -> None:
    book = opened_book(a=1_000, b=500)
    book.record("transfer", "a", 50, Outcome.APPLIED, to="b")
    final = {"a": 951, "b": 549}  # one coin of the transfer landed back in a
    assert book.check_sum(final) == []
    problems = book.check_accounts(final)
    assert len(problems) == 2
    assert problems[0].startswith("account a has 951, expected 950")
    assert "off by +1" in problems[0]
    assert book.check_accounts({"a": 950}) == ["account b has no final balance"]


def test_a_hold_settles_into_the_book_and_held_must_match_pending_holds() -> None:
    book = opened_book(payer=1_000, payee=0)
    far = "2999-01-01T00:00:00.000000Z"
    book.hold_created("h1", HoldNote("payer", "payee", 300, far))
    book.hold_created("h2", HoldNote("payer", "payee", 200, far))
    book.hold_settled("h1", "CAPTURED", 120)
    assert book.expected == {"payer": 880, "payee": 120}
    assert book.unresolved_holds() == ["h2"]
    now_s = 2_000_000_000.0
    assert book.check_held({"payer": 200, "payee": 0}, now_s, now_s) == []
    problems = book.check_held({"payer": 0, "payee": 0}, now_s, now_s)
    assert problems == ["account payer holds 0, but its pending holds add up to 200"]


def test_an_unanswered_capture_is_settled_by_looking_the_hold_up() -> None:
    book = opened_book(payer=1_000, payee=0)
    book.hold_created("h1", HoldNote("payer", "payee", 300, "2999-01-01T00:00:00Z"))
    book.hold_settled("h1", "UNKNOWN")
    assert book.unresolved_holds() == ["h1"]
    assert book.hold_observed("h1", "CAPTURED", 300) == []
    assert book.expected == {"payer": 700, "payee": 300}


def test_a_hold_nobody_settled_must_not_be_captured_or_pending_past_expiry() -> None:
    book = opened_book(payer=1_000, payee=0)
    book.hold_created("h1", HoldNote("payer", "payee", 300, "2030-01-01T00:00:00Z"))
    assert book.hold_observed("h1", "CAPTURED", 300) == ["hold h1 is CAPTURED though no client captured it"]
    book = opened_book(payer=1_000, payee=0)
    book.hold_created("h1", HoldNote("payer", "payee", 300, "2030-01-01T00:00:00Z"))
    assert book.hold_observed("h1", "PENDING", 0) == []
    after_expiry_s = 1_900_000_000.0  # 2030-03-17
    problems = book.check_held({"payer": 300, "payee": 0}, after_expiry_s, after_expiry_s)
    assert problems == ["hold h1 of payer is still PENDING, though it expired at 2030-01-01T00:00:00Z"]


def test_a_hold_that_may_expire_while_accounts_are_read_may_be_held_or_not() -> None:
    book = opened_book(payer=1_000, payee=0)
    book.hold_created("h1", HoldNote("payer", "payee", 300, "2030-01-01T00:00:00Z"))
    looked_up_s, read_s = 1_893_456_000.0 - 1, 1_893_456_000.0 + 1  # around its expiry
    assert book.check_held({"payer": 300, "payee": 0}, looked_up_s, read_s) == []
    assert book.check_held({"payer": 0, "payee": 0}, looked_up_s, read_s) == []
    assert book.check_held({"payer": 150, "payee": 0}, looked_up_s, read_s) == [
        "account payer holds 150, but its pending holds add up to 0 or 300"
    ]


def test_the_bank_run_chain_accounts_each_payout_once() -> None:
    # (sequence, amount, balance after), answered out of order
    payouts = [(12, 30, 50), (10, 20, 80), (15, 50, 0)]
    assert check_debit_chain(100, payouts) == []
    doubled = [(10, 20, 80), (11, 20, 80)]  # two payouts saw the same balance: one was not debited
    assert check_debit_chain(100, doubled) == ["the debit of 20 at sequence 11 left 80, expected 60"]
    # an unanswered payout of 5 may sit between two answered ones, but no more than 5
    assert check_debit_chain(100, [(10, 20, 80), (12, 30, 45)], unanswered=5) == []
    assert check_debit_chain(100, [(10, 20, 80), (12, 30, 44)], unanswered=5) != []


def test_the_bank_run_never_pays_more_than_there_was() -> None:
    assert check_payouts(100, 100, 0, [5, 7]) == []
    assert check_payouts(100, 90, 10, []) == []
    assert check_payouts(100, 101, -1, []) == [
        "paid out 101, more than the 100 there was",
    ]
    assert check_payouts(100, 90, 11, []) == ["the bank holds 11, expected 10 (100 less 90 paid)"]
    # a payout of 5 went unanswered: it may have been paid
    assert check_payouts(100, 90, 5, [], unanswered=5) == []
    assert check_payouts(100, 90, 4, [], unanswered=5) != []
    assert check_payouts(100, 90, 10, [10]) == ["a payout of 10 was refused, yet 10 is left"]


@pytest.mark.parametrize(("amount", "fee"), [(1, 0), (99, 0), (100, 1), (199, 1), (250, 2), (2_000, 20)])
def test_the_fee_is_one_percent_rounded_down(amount: int, fee: int) -> None:
    assert fee_of(amount) == fee


def test_an_account_must_receive_what_it_is_owed() -> None:
    assert check_received("merchant", {"m": 990, "n": 5}, {"m": 990}) == []
    assert check_received("merchant", {"m": 989}, {"m": 990}) == ["merchant m has 989, expected 990"]
    assert check_received("merchant", {"m": 995}, {"m": 990}, doubt=5) == []
    assert check_received("merchant", {}, {"m": 0}) == ["merchant m has None, expected 0"]


# -- real runs: gunicorn + locust headless --------------------------------------------


def locust_env(**variables: str) -> dict[str, str]:
    """This environment without LEDGER_/LOCUST_ settings (locust reads LOCUST_* as options)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LEDGER_", "LOCUST_"))}
    env.update({"PYTHONUNBUFFERED": "1"})
    env.update(variables)
    return env


def run_locust(
    host: str | None,
    *options: str,
    run_time: str = "4s",
    users: int = 20,
    locustfile: str = LOCUSTFILE,
    **variables: str,
) -> subprocess.CompletedProcess[str]:
    command = [
        str(LOCUST),
        "-f",
        locustfile,
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        run_time,
    ]
    command += ["--host", host] if host else []
    command += ["--only-summary", "--exit-code-on-error", str(REQUEST_FAILURE_EXIT), *options]
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


COMMON_INVARIANTS = ("verify", "conservation", "holds", "accounts")

#: Each scenario: its options for a short run, its own invariants, and what its report must say.
SCENARIO_RUNS = {
    "mixed": ((), ("tagged transfers",), r"acked .*captures"),
    "hft": (
        ("-u", "50", "-r", "50"),
        ("timeouts applied nothing",),
        r"\d+ of [\d,]+ trades timed out \(.*1 ms: ",
    ),
    # funds that run dry within the run
    "bank_run": (("--opening-balance", "20000"), ("payouts", "payout chain", "cash-outs"), r"ran dry"),
    "payments": ((), ("fees", "merchants", "payments settled"), r"kept [\d,]+ in fees"),
    "hot_merchant": (("--pool-size", "300"), ("merchant",), r"from 300 customers"),
    "batches": ((), ("atomic batches",), r"[\d,]+ refused whole"),
    "refunds": ((), ("refunds",), r"[\d,]+ keyed retries replayed, 0 not"),
}


@pytest.fixture(scope="module")
def mixed_run(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One run of the mixed scenario with --csv: its output and its CSV prefix."""
    prefix = str(tmp_path_factory.mktemp("csv") / "mixed" / "locust")
    result = run_locust(
        ledger_url,
        "--scenario",
        "mixed",
        "--csv",
        prefix,
        "--csv-full-history",
        LEDGER_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    assert result.returncode == 0, f"locust exited {result.returncode}:\n{result.stdout[-6000:]}"
    return result.stdout, prefix


def assert_invariants_hold(output: str, scenario: str, own: tuple[str, ...], report: str) -> None:
    names = (*COMMON_INVARIANTS, *own)
    for name in names:
        assert re.search(rf"invariant {re.escape(name)} OK: ", output), f"{name}:\n{output[-6000:]}"
    assert f"scenario {scenario}: all {len(names)} invariants hold" in output, output[-6000:]
    assert "VIOLATED" not in output
    assert "0 with unknown outcome" in output
    assert re.search(report, output), f"{report!r} not in:\n{output[-6000:]}"
    assert "Aggregated" in output  # the summary was printed, and the run did send requests


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(set(SCENARIO_RUNS) - {"mixed"}))
def test_each_scenario_runs_and_its_invariants_hold(ledger_url: str, scenario: str) -> None:
    options, own, report = SCENARIO_RUNS[scenario]
    result = run_locust(ledger_url, "--scenario", scenario, *options, LEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    assert result.returncode == 0, f"locust exited {result.returncode}:\n{result.stdout[-6000:]}"
    assert_invariants_hold(result.stdout, scenario, own, report)


@pytest.mark.slow
def test_the_mixed_scenario_runs_and_writes_its_csv(mixed_run: tuple[str, str]) -> None:
    output, prefix = mixed_run
    assert_invariants_hold(output, "mixed", *SCENARIO_RUNS["mixed"][1:])
    for suffix in ("stats", "stats_history", "failures", "outcomes", "invariants"):
        assert Path(f"{prefix}_{suffix}.csv").is_file(), suffix
    assert "mixed,conservation,True," in Path(f"{prefix}_invariants.csv").read_text()


@pytest.mark.slow
def test_the_charts_of_a_real_run_are_png_files(mixed_run: tuple[str, str], tmp_path: Path) -> None:
    _, prefix = mixed_run
    assert plot_main([prefix, "--out", str(tmp_path), "--title", "mixed"]) == 0
    for name in ("throughput.png", "latency.png", "failures.png"):
        assert png_size(tmp_path / name) == (800, 400), name


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, from its header (which must be a PNG's)."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_failure_chart_shows_failures_and_refusals_by_kind(tmp_path: Path) -> None:
    """A tiny run in the shape locust writes, with failures: every chart is still drawn."""
    prefix = tmp_path / "tiny"
    header = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%"
    rows = [
        "1700000000,0,,Aggregated,0.000000,0.000000,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A",
        "1700000001,5,POST,/account/coins/add,10.0,1.0,3,4,4,5,6,7,8,9",
        "1700000001,5,,Aggregated,10.0,1.0,3,4,4,5,6,7,8,9",
        "1700000002,5,,Aggregated,12.5,0.0,2,3,3,4,5,6,7,8",
    ]
    Path(f"{prefix}_stats_history.csv").write_text("\n".join([header, *rows]) + "\n")
    Path(f"{prefix}_failures.csv").write_text(
        "Method,Name,Error,Occurrences\nPOST,/account/coins/add,HTTP 503 timeout,4\n"
    )
    Path(f"{prefix}_outcomes.csv").write_text("outcome,kind,count\nrefused,insufficient_funds,7\n")
    assert plot_main([str(prefix)]) == 0
    for name in ("throughput.png", "latency.png", "failures.png"):
        assert png_size(tmp_path / name) == (800, 400), name


def test_plotting_a_missing_run_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        plot_main([str(tmp_path / "nothing")])
    assert stopped.value.code == 1
    assert "cannot plot" in capsys.readouterr().err


SKEWS = {
    # One deposit counted that the server never saw: the sum and that account are off by one.
    "mixed": (
        "common.running().book.record('deposit', next(iter(common.running().accounts)), 1, APPLIED)",
        ("conservation", "accounts"),
        "off by -1",
    ),
    # A transfer acknowledged that the filtered read cannot find.
    "mixed tags": (
        "common.running().acknowledged.add('never-sent')",
        ("tagged transfers",),
        "acknowledged transfer never-sent not found",
    ),
    # One payout answered twice over: the chain of the bank's balances breaks.
    "bank_run": (
        "run = common.running(); run.payouts.append((10**12, 1, run.payouts[-1][2]))",
        ("payouts", "payout chain"),
        "expected",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SKEWS))
def test_a_broken_invariant_fails_the_locust_process(ledger_url: str, tmp_path: Path, scenario: str) -> None:
    """Skew the client's own figures just before the check: it must fail the run with status 1."""
    skew, broken, detail = SKEWS[scenario]
    scenario = scenario.split()[0]
    skewed = tmp_path / "skewed_locustfile.py"
    skewed.write_text(
        "from locust import events\n"
        "from loadtests import common\n"
        "from loadtests.conservation import Outcome\n"
        "from loadtests.locustfile import *  # noqa: F403  (the user classes and the listeners)\n"
        "APPLIED = Outcome.APPLIED\n"
        "\n"
        "@events.test_stopping.add_listener\n"
        "def _skew(**_):\n"
        f"    {skew}\n"
    )
    result = run_locust(
        ledger_url,
        "--scenario",
        scenario,
        "--opening-balance",
        "20000",
        run_time="3s",
        locustfile=str(skewed),
        LEDGER_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    output = result.stdout
    assert result.returncode == 1, f"locust exited {result.returncode}:\n{output[-6000:]}"
    for name in broken:
        assert f"invariant {name} VIOLATED: " in output, f"{name}:\n{output[-6000:]}"
    assert detail in output
    assert f"scenario {scenario}: {len(broken)} of " in output
    assert "invariants VIOLATED" in output


@pytest.mark.slow
def test_an_unknown_scenario_is_refused_with_the_list() -> None:
    result = run_locust("http://127.0.0.1:9", "--scenario", "bank-run", LEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    assert result.returncode == 2, result.stdout[-6000:]
    assert "argument --scenario: invalid choice: 'bank-run'" in result.stdout
    assert "'bank_run', 'batches', 'hft', 'hot_merchant', 'mixed', 'payments'" in result.stdout


@pytest.mark.slow
def test_a_run_too_short_to_open_its_accounts_fails(ledger_url: str) -> None:
    # 10,000 accounts take several seconds to open: the run ends first, having checked nothing.
    result = run_locust(
        ledger_url,
        "--scenario",
        "hot_merchant",
        "--pool-size",
        "10000",
        run_time="1s",
        LEDGER_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    assert result.returncode == 1, result.stdout[-6000:]
    assert "the run stopped before its accounts were all opened, so nothing was checked" in result.stdout
    assert "invariant" not in result.stdout


@pytest.mark.slow
def test_a_wrong_admin_token_stops_the_run_clearly(ledger_url: str) -> None:
    result = run_locust(ledger_url, run_time="5s", LEDGER_ADMIN_TOKEN="not-the-admin-token")
    assert result.returncode == 1, result.stdout[-6000:]
    assert "cannot start the load test: POST /admin/accounts" in result.stdout
    assert "same LEDGER_ADMIN_TOKEN" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "token", "message"),
    [
        ((), "", "LEDGER_ADMIN_TOKEN is not set"),
        (
            ("--scenario", "hft", "--pool-size", "49"),
            "x",
            "--pool-size for hft must be from 50 to 10000, not 49",
        ),
        (("--opening-balance", str(10**15 + 1)), "x", "--opening-balance must be from 0 to"),
        (("MixedUser",), "x", "choose the scenario with --scenario NAME"),
    ],
)
def test_bad_settings_are_refused_before_any_request(
    options: tuple[str, ...], token: str, message: str
) -> None:
    # Port 9 (discard) on loopback: never contacted, the run must stop at start-up.
    result = run_locust("http://127.0.0.1:9", *options, run_time="5s", LEDGER_ADMIN_TOKEN=token)
    assert result.returncode == 1, result.stdout[-6000:]
    assert message in result.stdout
