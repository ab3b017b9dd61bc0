"""Configuration from the environment, and the checks made before serving."""

from __future__ import annotations

import pytest

from app.config import Config, ConfigError
from app.serving import check_worker_count


def test_defaults() -> None:
    config = Config.from_env({})
    assert config == Config(
        store="memory", data_dir=None, admin_token=None, demo=True, op_timeout_ms=2000, port=3000
    )


def test_demo_defaults_off_with_postgresql() -> None:
    assert Config.from_env({"LEDGER_STORE": "postgresql://localhost/ledger"}).demo is False


def test_every_variable_is_read() -> None:
    config = Config.from_env(
        {
            "LEDGER_DATA_DIR": "/var/lib/goledger",
            "LEDGER_ADMIN_TOKEN": "admin",
            "LEDGER_DEMO": "0",
            "LEDGER_OP_TIMEOUT_MS": "500",
            "PORT": "8080",
        }
    )
    assert (config.data_dir, config.admin_token, config.demo, config.op_timeout_ms, config.port) == (
        "/var/lib/goledger",
        "admin",
        False,
        500,
        8080,
    )


@pytest.mark.parametrize(
    "environ",
    [
        {"LEDGER_STORE": "mysql://x"},
        {"LEDGER_DEMO": "maybe"},
        {"LEDGER_OP_TIMEOUT_MS": "0"},
        {"LEDGER_OP_TIMEOUT_MS": "fast"},
        {"LEDGER_OP_TIMEOUT_MS": "60001"},
        {"PORT": "70000"},
        {"PORT": "http"},
    ],
)
def test_bad_values_stop_the_start_with_a_clear_message(environ: dict[str, str]) -> None:
    name = next(iter(environ))
    with pytest.raises(ConfigError, match=name):
        Config.from_env(environ)


def test_one_worker_is_fine_on_the_memory_store() -> None:
    check_worker_count(1, Config())


def test_several_workers_are_refused_on_the_memory_store() -> None:
    with pytest.raises(ConfigError, match="one process"):
        check_worker_count(2, Config())


def test_several_workers_are_allowed_on_postgresql() -> None:
    check_worker_count(4, Config(store="postgresql://localhost/ledger", demo=False))


def test_demo_accounts_only_when_asked() -> None:
    from app import create_app

    client = create_app({"demo": False}).test_client()
    assert client.get("/account/coins?username=aaron", headers={"Authorization": "1"}).status_code == 401


@pytest.mark.parametrize(
    ("environ", "open_by_default"),
    [
        ({}, True),
        ({"LEDGER_DATA_DIR": "/var/lib/goledger"}, False),
        ({"LEDGER_STORE": "postgresql://localhost/ledger"}, False),
    ],
    ids=["memory", "data-dir", "postgresql"],
)
def test_demo_accounts_and_self_deposits_only_for_a_ledger_kept_nowhere(
    environ: dict[str, str], open_by_default: bool
) -> None:
    config = Config.from_env(environ)
    assert (config.demo, config.self_deposit) == (open_by_default, open_by_default)
    explicit = Config.from_env({**environ, "LEDGER_DEMO": "1", "LEDGER_SELF_DEPOSIT": "1"})
    assert (explicit.demo, explicit.self_deposit) == (True, True)
    closed = Config.from_env({**environ, "LEDGER_DEMO": "0", "LEDGER_SELF_DEPOSIT": "0"})
    assert (closed.demo, closed.self_deposit) == (False, False)


def test_a_bad_self_deposit_flag_stops_the_start() -> None:
    with pytest.raises(ConfigError, match="LEDGER_SELF_DEPOSIT"):
        Config.from_env({"LEDGER_SELF_DEPOSIT": "sometimes"})


def test_a_mistyped_store_url_is_named_without_its_password() -> None:
    with pytest.raises(ConfigError, match="LEDGER_STORE") as raised:
        Config.from_env({"LEDGER_STORE": "mysql://ledger:hunter2@db.internal/ledger"})
    assert "hunter2" not in str(raised.value)
    assert "mysql://ledger:***@db.internal/ledger" in str(raised.value)


def test_an_unreachable_postgresql_store_is_named_without_its_password() -> None:
    from app import create_app

    # Port 1 on loopback: refused at once, and libpq's message may quote the address.
    url = "postgresql://ledger:hunter2@127.0.0.1:1/ledger?connect_timeout=2"
    with pytest.raises(ConfigError) as raised:
        create_app({"store": url})
    assert "hunter2" not in str(raised.value)
    # The driver's own error (which may quote the URL) is not chained into the traceback.
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ledger:hunter2@db/ledger", "postgresql://ledger:***@db/ledger"),
        ("postgresql://ledger@db/ledger", "postgresql://ledger@db/ledger"),
        ("memory", "memory"),
    ],
)
def test_redacted_urls(url: str, shown: str) -> None:
    from app.config import redacted_url

    assert redacted_url(url) == shown


def test_every_start_warns_while_a_demo_token_opens_an_account(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A durable ledger that was seeded once keeps its public tokens: each start says so."""
    from app import create_app
    from tests.stores import app_config, empty_postgres

    url = empty_postgres(postgres_url)
    for demo in (True, False):  # seeded by the first start, still there at the second
        caplog.clear()
        app = create_app(app_config(url, demo=demo))
        app.extensions["ledger"].close()
        warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
        assert any("aaron, bryan open with well-known tokens" in message for message in warnings), warnings


def test_no_warning_without_demo_accounts(caplog: pytest.LogCaptureFixture) -> None:
    from app import create_app

    create_app({"demo": False}).extensions["ledger"].close()
    assert not [record for record in caplog.records if "well-known tokens" in record.getMessage()]
