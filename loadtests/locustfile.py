"""GoLedger load tests: one scenario per run, chosen by name, then its invariants.

Run one against a server started with ``LEDGER_ADMIN_TOKEN`` set, giving the same token::

    LEDGER_ADMIN_TOKEN=... locust -f loadtests/locustfile.py --scenario bank_run \\
        --headless -u 50 -r 50 -t 30s --host http://127.0.0.1:3000

Scenarios (``--scenario``, or ``LOCUST_SCENARIO``; default ``mixed``): ``mixed``, ``hft``,
``bank_run``, ``payments``, ``hot_merchant``, ``batches``, ``refunds``; each module's docstring
says what it does and checks. An unknown name stops locust at once with the list.
``--pool-size`` (``LOCUST_POOL_SIZE``) and ``--opening-balance``
(``LOCUST_OPENING_BALANCE``) size the scenario's main group of accounts.

What a run does:

* At test start the scenario opens fresh accounts through ``POST /admin/accounts``,
  named ``<scenario>-<random run id>-<role>-NNNN``, so it can be rerun against the
  same server.
* Its users send their requests; every money request's outcome goes into the
  scenario's book. Expected business outcomes (``insufficient_funds``; ``timeout``
  in ``hft``) count as successes; any other error status is a request failure.
* At test stop, once every user has finished, it reads every account back and
  checks the invariants: ``/admin/verify`` ok; money conserved (the sum of balances
  equals the opening total plus acknowledged deposits minus acknowledged
  withdrawals, none negative); each account's balance equal to its opening plus
  its acknowledged moves; each ``held`` equal to the sum of its pending holds, and
  no hold pending past its expiry; then the scenario's own. Each is logged as
  ``invariant NAME OK: ...`` or ``invariant NAME VIOLATED: ...``, then one line
  ``scenario NAME: all N invariants hold`` or ``scenario NAME: K of N invariants
  VIOLATED``. A violation makes locust exit with status 1; request failures keep
  locust's own exit code (``--exit-code-on-error``, 1 by default).
* With ``--csv PREFIX`` it also writes ``PREFIX_outcomes.csv`` (acknowledged
  operations, expected refusals and unknown outcomes, by kind) and
  ``PREFIX_invariants.csv``, beside locust's own files; ``loadtests/plot.py``
  turns them into PNG charts.

Only local runs are supported: the checks need every request's outcome in this one
process, so ``--master``/``--worker``/``--processes`` are refused at start-up.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
import requests
from locust import events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

# locust imports this file as a top-level module with its own folder on sys.path;
# the scenarios import each other as ``loadtests.*``, from the repository root.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from loadtests.bank_run import BankRun, BankRunUser  # noqa: E402
from loadtests.batches import Batches, BatchUser  # noqa: E402
from loadtests.common import (  # noqa: E402
    INFLIGHT_GRACE_S,
    MAX_AMOUNT,
    Check,
    Scenario,
    SetupError,
    inflight,
    running,
    set_current,
)
from loadtests.hft import Hft, HftUser  # noqa: E402
from loadtests.hot_merchant import HotMerchant, HotMerchantUser  # noqa: E402
from loadtests.mixed import Mixed, MixedUser  # noqa: E402
from loadtests.payments import Payments, PaymentsUser  # noqa: E402
from loadtests.refunds import Refunds, RefundsUser  # noqa: E402

_log = logging.getLogger("goledger.loadtest")

SCENARIOS: dict[str, type[Scenario]] = {
    scenario.name: scenario for scenario in (Mixed, Hft, BankRun, Payments, HotMerchant, Batches, Refunds)
}
#: Locust only finds user classes in this module's namespace; ``--scenario`` picks one.
__all__ = [
    "BankRunUser",
    "BatchUser",
    "HftUser",
    "HotMerchantUser",
    "MixedUser",
    "PaymentsUser",
    "RefundsUser",
]


@dataclass(frozen=True)
class Settings:
    scenario: type[Scenario]
    admin_token: str
    pool_size: int
    opening_balance: int


_settings: Settings | None = None
#: From test start until the invariants have been checked: a run that ends before
#: its accounts were all opened (a --run-time shorter than the set-up) checked nothing.
_unchecked = False


def _add_options(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="mixed",
        env_var="LOCUST_SCENARIO",
        include_in_web_ui=False,
        help="the load-test scenario to run: "
        + "; ".join(f"{name}: {SCENARIOS[name].description}" for name in sorted(SCENARIOS)),
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        env_var="LOCUST_POOL_SIZE",
        include_in_web_ui=False,
        help="accounts in the scenario's main group (default: the scenario's own)",
    )
    parser.add_argument(
        "--opening-balance",
        type=int,
        env_var="LOCUST_OPENING_BALANCE",
        include_in_web_ui=False,
        help="coins each of them starts with (default: the scenario's own)",
    )


def _settings_from(options: Any) -> Settings:
    scenario = SCENARIOS[options.scenario]
    admin_token = os.environ.get("LEDGER_ADMIN_TOKEN", "").strip()
    if not admin_token:
        raise SetupError(
            "LEDGER_ADMIN_TOKEN is not set: export the admin token the server was started with "
            "(the load test opens its accounts through POST /admin/accounts)"
        )
    if options.user_classes:
        raise SetupError(
            f"user classes given ({' '.join(options.user_classes)}): choose the scenario with --scenario NAME"
        )
    pool_size = scenario.default_pool_size if options.pool_size is None else options.pool_size
    if not scenario.min_pool_size <= pool_size <= scenario.max_pool_size:
        raise SetupError(
            f"--pool-size for {scenario.name} must be from {scenario.min_pool_size} to "
            f"{scenario.max_pool_size}, not {pool_size}"
        )
    opening = scenario.default_opening_balance if options.opening_balance is None else options.opening_balance
    if not 0 <= opening <= MAX_AMOUNT:
        raise SetupError(f"--opening-balance must be from 0 to {MAX_AMOUNT}, not {opening}")
    return Settings(scenario, admin_token, pool_size, opening)


def _on_init(environment: Environment, **_: Any) -> None:
    global _settings
    if isinstance(environment.runner, MasterRunner | WorkerRunner):
        _log.error(
            "distributed runs (--master/--worker/--processes) are not supported: the invariant "
            "checks need every request's outcome in one process; run locust locally"
        )
        raise SystemExit(1)
    options = environment.parsed_options
    try:
        _settings = _settings_from(options)
        if getattr(options, "headless", False) and not environment.host:  # the web UI asks for it later
            raise SetupError("no host: pass --host http://127.0.0.1:3000")
    except SetupError as error:
        _log.error("%s", error)
        raise SystemExit(1) from None
    environment.user_classes = [_settings.scenario.user_class]


def _on_test_start(environment: Environment, **_: Any) -> None:
    global _unchecked
    set_current(None)
    _unchecked = True
    try:
        if _settings is None:
            raise SetupError("the init event did not run")
        if not environment.host:
            raise SetupError("no host: pass --host http://127.0.0.1:3000")
        scenario = _settings.scenario(
            environment.host.rstrip("/"),
            _settings.admin_token,
            _settings.pool_size,
            _settings.opening_balance,
        )
        scenario.open()
    except (SetupError, requests.RequestException) as error:
        _log.error("cannot start the load test: %s", error)
        environment.process_exit_code = 1
        _unchecked = False  # and reported
        if environment.runner is not None:
            gevent.spawn(environment.runner.quit)
        return
    set_current(scenario)
    _log.info(
        "scenario %s: opened %d accounts %s-%s-*",
        scenario.name,
        len(scenario.accounts),
        scenario.name,
        scenario.run_id,
    )


def _on_spawning_complete(**_: Any) -> None:
    scenario = running()
    if scenario is not None:
        scenario.all_spawned()


def _on_test_stop(environment: Environment, **_: Any) -> None:
    global _unchecked
    scenario = set_current(None)
    if scenario is None:
        _on_quitting(environment)
        return
    if not inflight.join(timeout=INFLIGHT_GRACE_S):
        inflight.kill(block=True)  # their outcomes become "unknown" and widen the checks
    try:
        checks = scenario.verify()
    except Exception as error:
        checks = [Check("final check", [f"the check itself failed: {error!r}"])]
    _report(scenario, checks)
    _unchecked = False
    if any(not check.ok for check in checks):
        # Only ever set on failure: a set exit code overrides locust's own, which is
        # what reports request failures (--exit-code-on-error).
        environment.process_exit_code = 1
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        _write_csv(prefix, scenario, checks)


def _on_quitting(environment: Environment, **_: Any) -> None:
    global _unchecked
    if _unchecked:
        _log.error("the run stopped before its accounts were all opened, so nothing was checked: raise -t")
        environment.process_exit_code = 1
        _unchecked = False


def _report(scenario: Scenario, checks: list[Check]) -> None:
    for check in checks:
        if check.ok:
            _log.info("invariant %s OK: %s", check.name, check.summary)
        for problem in check.problems:
            _log.error("invariant %s VIOLATED: %s", check.name, problem)
    broken = [check.name for check in checks if not check.ok]
    if broken:
        _log.error(
            "scenario %s: %d of %d invariants VIOLATED (%s)",
            scenario.name,
            len(broken),
            len(checks),
            ", ".join(broken),
        )
    else:
        _log.info("scenario %s: all %d invariants hold", scenario.name, len(checks))


def _write_csv(prefix: str, scenario: Scenario, checks: list[Check]) -> None:
    book = scenario.book
    with open(f"{prefix}_outcomes.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["outcome", "kind", "count"])
        writer.writerows(("acked", kind, count) for kind, count in sorted(book.acked.items()))
        writer.writerows(("refused", error, count) for error, count in sorted(book.refusals.items()))
        writer.writerow(("unknown", "any", book.uncertain_count))
    with open(f"{prefix}_invariants.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["scenario", "invariant", "ok", "detail"])
        writer.writerows(
            (scenario.name, check.name, check.ok, check.summary if check.ok else "; ".join(check.problems))
            for check in checks
        )


events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_on_test_start)  # type: ignore[no-untyped-call]
events.spawning_complete.add_listener(_on_spawning_complete)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_on_test_stop)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]
