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
