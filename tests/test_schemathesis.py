"""schemathesis against the live service, from its own ``/openapi.json``.

gunicorn serves on a free 127.0.0.1 port with an admin token; accounts are created up
front and handed to ``tests/schemathesis_hooks.py``, which authenticates every
generated request. ``st run`` then goes through all its phases (the document's
examples, coverage of boundary values, fuzzing, and stateful sequences along the
document's links: create a hold -> read, capture or void it; create an account ->
balance and history; deposit -> balance) with both valid and invalid data, and
checks every answer: no 5xx, a documented status, content type, headers and body.
Afterwards ``/admin/verify`` must still find every invariant of the ledger intact.

The bounded run here takes a fixed number of examples per operation in
schemathesis' deterministic mode. A longer, seeded run (see the README)::

    GOLEDGER_FUZZ_EXAMPLES=500 GOLEDGER_FUZZ_SEED=1 .venv/bin/pytest -s tests/test_schemathesis.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from app.ledger.model import MAX_AMOUNT
from tests.servers import ROOT, gunicorn_server

DEFAULT_EXAMPLES = 15
EXAMPLES = int(os.environ.get("GOLEDGER_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
#: The bounded run takes 30 to 40 s here; a longer one is given room in proportion.
RUN_TIMEOUT_S = max(240, EXAMPLES * 12)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + 60)]

ADMIN_TOKEN = "fuzz-admin-token"
#: Accounts the generated requests act as (the first is the default caller).
ACCOUNTS = {"fuzz-alice": "fuzz-token-alice", "fuzz-bob": "fuzz-token-bob", "fuzz-carol": "fuzz-token-carol"}
#: Enough that any generated amount (at most 10^15) is usually affordable, so that holds
#: and transfers succeed and their links can be followed; far from 2^63-1 all the same.
FUNDING_DEPOSITS = 100
_FUNDING_DEPOSIT = {"type": "add", "amount": MAX_AMOUNT}
#: Everything schemathesis checks except the two that judge the *request*
#: (negative_data_rejection, positive_data_acceptance): the service rightly refuses
#: some schema-valid requests (insufficient funds, an unknown cursor, If-Match on an
#: old version) and ignores unknown headers and JSON fields, as the contract says.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
)


def _st_command(base_url: str, report: Path) -> list[str]:
    seed = os.environ.get("GOLEDGER_FUZZ_SEED")
    st = Path(sys.executable).with_name("st")
    command = [
        str(st),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "too_slow",
        "--report",
        "junit",
        "--report-dir",
        str(report),
        "--no-color",
    ]
    # Deterministic by default, so that the suite passes or fails the same way each run.
    # A seeded run keeps no example database either (in tmp_path, which is thrown away).
    command += ["--seed", seed, "--generation-database", "none"] if seed else ["--generation-deterministic"]
    return command


def _open_accounts(base_url: str) -> None:
    for username, token in ACCOUNTS.items():
        created = requests.post(
            f"{base_url}/admin/accounts",
            json={"username": username, "token": token, "balance": MAX_AMOUNT},
            headers={"Authorization": ADMIN_TOKEN},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        funded = requests.post(
            f"{base_url}/account/coins/batch",
            json={"username": username, "operations": [_FUNDING_DEPOSIT] * FUNDING_DEPOSITS},
            headers={"Authorization": token},
            timeout=10,
        )
        assert funded.json()["succeeded"] == FUNDING_DEPOSITS, funded.text


def test_schemathesis_finds_nothing_against_the_live_service(tmp_path: Path) -> None:
    with gunicorn_server(LEDGER_ADMIN_TOKEN=ADMIN_TOKEN, LEDGER_DEMO="0") as base_url:
        _open_accounts(base_url)
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": str(ROOT / "tests" / "schemathesis_hooks.py"),
            "GOLEDGER_FUZZ_ACCOUNTS": json.dumps(ACCOUNTS),
            "GOLEDGER_FUZZ_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        # In tmp_path, so that schemathesis' caches stay out of the repository.
        run = subprocess.run(
            _st_command(base_url, tmp_path / "report"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        verify = requests.get(f"{base_url}/admin/verify", headers={"Authorization": ADMIN_TOKEN}, timeout=30)

    print(run.stdout[-6_000:])  # phases, links covered and warnings, shown with -s or -rP
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    # Every operation but GET /openapi.json itself, which schemathesis leaves out when it loads from it.
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", summary)
    assert selected is not None, summary
    assert int(selected[1]) == int(selected[2]) == int(selected[3]) == 25, summary
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary
    assert verify.status_code == 200, verify.text
    assert verify.json()["ok"] is True
