"""gateway.config: one frozen Settings, from SSE_GATEWAY_* variables and flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import ENV_PREFIX, Settings


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.redis_url is None
    assert settings.key_prefix == "sse:"
    assert (settings.buffer_maxlen, settings.buffer_max_age) == (1000, 3600.0)
    assert (settings.heartbeat, settings.retry_ms) == (15.0, 3000)
    assert (settings.max_channels, settings.max_body_bytes) == (16, 1024 * 1024)
    assert (settings.client_buffer_events, settings.client_buffer_bytes) == (1024, 4 * 1024 * 1024)
    assert (settings.shutdown_grace, settings.log_level) == (5.0, "info")


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_from_env_without_variables_gives_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_from_env_reads_and_coerces_each_kind() -> None:
    settings = Settings.from_env(
        {
            "SSE_GATEWAY_HOST": "0.0.0.0",
            "SSE_GATEWAY_PORT": "9001",
            "SSE_GATEWAY_REDIS_URL": "redis://example:6380/2",
            "SSE_GATEWAY_BUFFER_MAXLEN": "50",
            "SSE_GATEWAY_BUFFER_MAX_AGE": "0.25",
            "SSE_GATEWAY_HEARTBEAT": "2",
            "SSE_GATEWAY_CLIENT_BUFFER_BYTES": "65536",
            "SSE_GATEWAY_LOG_LEVEL": "debug",
        }
    )
    assert settings.host == "0.0.0.0"
    assert settings.port == 9001 and type(settings.port) is int
    assert settings.redis_url == "redis://example:6380/2"
    assert settings.buffer_maxlen == 50 and type(settings.buffer_maxlen) is int
    assert settings.buffer_max_age == 0.25
    assert settings.heartbeat == 2.0 and type(settings.heartbeat) is float
    assert settings.client_buffer_bytes == 65536
    assert settings.log_level == "debug"
    assert settings.retry_ms == 3000


def test_from_env_ignores_empty_and_unrelated_variables() -> None:
    settings = Settings.from_env({"SSE_GATEWAY_PORT": "", "PORT": "1", "sse_gateway_port": "2", "SSE_GATEWAY_X": "3"})
    assert settings == Settings()


def test_from_env_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_GATEWAY_MAX_CHANNELS", "4")
    monkeypatch.setenv("SSE_GATEWAY_KEY_PREFIX", "app:")
    settings = Settings.from_env()
    assert (settings.max_channels, settings.key_prefix) == (4, "app:")


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("SSE_GATEWAY_PORT", "eighty"),
        ("SSE_GATEWAY_PORT", "1.5"),
        ("SSE_GATEWAY_RETRY_MS", "3s"),
        ("SSE_GATEWAY_HEARTBEAT", "fast"),
        ("SSE_GATEWAY_BUFFER_MAX_AGE", "1h"),
    ],
)
def test_from_env_bad_number_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=f"{name}='{raw}' is not a number"):
        Settings.from_env({name: raw})


def test_replace_changes_only_the_given_fields() -> None:
    base = Settings()
    changed = base.replace(port=9100, redis_url="redis://h/0")
    assert (changed.port, changed.redis_url) == (9100, "redis://h/0")
    assert changed.host == base.host
    assert base.port == 8000


def test_replace_ignores_none_so_unset_flags_keep_the_value() -> None:
    base = Settings(port=9200, redis_url="redis://h/0")
    assert base.replace(port=None, redis_url=None, host="::1") == Settings(
        port=9200, redis_url="redis://h/0", host="::1"
    )


def test_replace_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError):
        Settings().replace(colour="blue")


def test_to_env_names_every_set_field_with_the_prefix() -> None:
    env = Settings(port=9300).to_env()
    assert env["SSE_GATEWAY_PORT"] == "9300"
    assert env["SSE_GATEWAY_BUFFER_MAX_AGE"] == "3600.0"
    assert "SSE_GATEWAY_REDIS_URL" not in env
    assert all(key.startswith(ENV_PREFIX) for key in env)
    unset = [f.name for f in dataclasses.fields(Settings) if getattr(Settings(), f.name) is None]
    assert "redis_url" in unset
    assert len(env) == len(dataclasses.fields(Settings)) - len(unset)


@pytest.mark.parametrize(
    "settings",
    [
        Settings(),
        Settings(
            host="0.0.0.0",
            port=1234,
            workers=3,
            redis_url="redis://127.0.0.1:6399/1",
            key_prefix="t:",
            buffer_maxlen=0,
            buffer_max_age=0.2,
            heartbeat=0.5,
            retry_ms=100,
            max_channels=2,
            client_buffer_events=7,
            client_buffer_bytes=99,
            shutdown_grace=1.5,
            log_level="warning",
        ),
    ],
)
def test_to_env_then_from_env_round_trips(settings: Settings) -> None:
    assert Settings.from_env(settings.to_env()) == settings


def test_to_env_then_from_env_keeps_an_empty_key_prefix() -> None:
    # serve --workers N hands its settings to the workers through to_env/from_env: they must use the same keys.
    settings = Settings(key_prefix="", workers=2)
    assert Settings.from_env(settings.to_env()).key_prefix == ""


def test_readme_configuration_table_has_a_row_for_every_setting_with_its_flag() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip() for line in readme.splitlines() if line.startswith("| `")
    }
    for item in dataclasses.fields(Settings):
        variable, flag = f"`{ENV_PREFIX}{item.name.upper()}`", f"`--{item.name.replace('_', '-')}`"
        assert rows.get(variable) == flag, f"README's configuration table: {variable} needs a row with {flag}"
