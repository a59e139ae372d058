"""API keys as settings (parsing, files, checks) and their constant-time comparison; the security settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SETTINGS_ENV
from titanic_web import security
from titanic_web.auth import MIN_KEY_LENGTH, key_matches, keys_from_env, parse_keys
from titanic_web.config import ConfigError

KEY_A = "a" * MIN_KEY_LENGTH
KEY_B = "key-b-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


def test_keys_are_split_by_commas_and_lines() -> None:
    text = f" {KEY_A} ,{KEY_B}\n# a comment line, {'c' * 20}\n\n{KEY_A}\n"
    assert parse_keys(text, source="API_KEYS") == (KEY_A, KEY_B)
    assert parse_keys("", source="API_KEYS") == ()
    assert parse_keys(" , ,\n", source="API_KEYS") == ()


def test_a_short_key_is_refused_without_showing_it() -> None:
    short = "s3cr3t"
    with pytest.raises(ConfigError) as refused:
        parse_keys(f"{KEY_A},{short}", source="ADMIN_API_KEYS")
    message = str(refused.value)
    assert message.startswith("ADMIN_API_KEYS: key 2 is shorter than 16 characters")
    assert "secrets.token_urlsafe" in message
    assert short not in message


def test_a_key_with_white_space_is_refused() -> None:
    with pytest.raises(ConfigError, match="API_KEYS: key 1 contains white space"):
        parse_keys("two words-0123456789abcdef", source="API_KEYS")


def test_keys_come_from_the_variable_and_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# deploy keys\n{KEY_B}\n{KEY_A}\n")
    monkeypatch.setenv("API_KEYS", KEY_A)
    monkeypatch.setenv("API_KEYS_FILE", str(key_file))
    assert keys_from_env("API_KEYS") == (KEY_A, KEY_B)
    assert keys_from_env("ADMIN_API_KEYS") == ()


def test_an_unreadable_key_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.txt"
    monkeypatch.setenv("ADMIN_API_KEYS_FILE", str(missing))
    with pytest.raises(ConfigError, match=f"ADMIN_API_KEYS_FILE: cannot read {missing}: No such file"):
        keys_from_env("ADMIN_API_KEYS")


def test_a_bad_key_in_a_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("short\n")
    monkeypatch.setenv("API_KEYS_FILE", str(key_file))
    with pytest.raises(ConfigError, match=f"API_KEYS_FILE {key_file}: key 1 is shorter"):
        keys_from_env("API_KEYS")


def test_key_matches() -> None:
    assert key_matches(KEY_B, (KEY_A, KEY_B))
    assert not key_matches(KEY_B[:-1], (KEY_A, KEY_B))
    assert not key_matches(KEY_B + "x", (KEY_A, KEY_B))
    assert not key_matches("", (KEY_A,))
    assert not key_matches(KEY_A, ())


def test_security_defaults_suit_a_local_install() -> None:
    settings = security.settings_from_env()
    assert settings == {
        "APP_ENV": "development",
        "FORCE_HTTPS": False,
        "TRUSTED_PROXIES": 0,
        "RATELIMIT_ENABLED": True,
        "RATE_LIMIT": "1200/minute",
        "RATELIMIT_STORAGE_URI": "memory://",
        "RATELIMIT_KEY_PREFIX": "titanic-web",
        "API_KEYS": (),
        "ADMIN_API_KEYS": (),
    }


def test_security_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", " Production ")
    monkeypatch.setenv("FORCE_HTTPS", "true")
    monkeypatch.setenv("TRUSTED_PROXIES", "1")
    monkeypatch.setenv("RATE_LIMIT", "10/second;600/hour")
    monkeypatch.setenv("RATELIMIT_ENABLED", "off")
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("RATELIMIT_KEY_PREFIX", "titanic-eu")
    monkeypatch.setenv("API_KEYS", f"{KEY_A},{KEY_B}")
    monkeypatch.setenv("ADMIN_API_KEYS", KEY_B)
    settings = security.settings_from_env()
    assert settings["APP_ENV"] == "production"
    assert settings["FORCE_HTTPS"] is True and settings["TRUSTED_PROXIES"] == 1
    assert settings["RATE_LIMIT"] == "10/second;600/hour" and settings["RATELIMIT_ENABLED"] is False
    assert settings["RATELIMIT_STORAGE_URI"] == "redis://127.0.0.1:6379/0"
    assert settings["RATELIMIT_KEY_PREFIX"] == "titanic-eu"
    assert settings["API_KEYS"] == (KEY_A, KEY_B) and settings["ADMIN_API_KEYS"] == (KEY_B,)


@pytest.mark.parametrize("text", ["", " ", "\t"])
def test_a_blank_security_setting_means_the_default(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    defaults = security.settings_from_env()
    for name in ("APP_ENV", "RATE_LIMIT", "RATELIMIT_STORAGE_URI", "RATELIMIT_KEY_PREFIX", "FORCE_HTTPS"):
        monkeypatch.setenv(name, text)
    assert security.settings_from_env() == defaults


def test_bad_security_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "staging")
    with pytest.raises(ConfigError, match="APP_ENV must be one of development, production, got 'staging'"):
        security.settings_from_env()
    monkeypatch.delenv("APP_ENV")
    monkeypatch.setenv("TRUSTED_PROXIES", "-1")
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES must be at least 0"):
        security.settings_from_env()


def test_csp_has_no_unsafe_sources() -> None:
    for directive, sources in security.CONTENT_SECURITY_POLICY.items():
        assert "unsafe" not in sources, (directive, sources)


def test_an_unreadable_rate_limit_is_refused() -> None:
    from titanic_web.ratelimit import check_rate_limit

    check_rate_limit("20/second;1000/hour")
    for text in ("lots", "", "10 per"):
        with pytest.raises(ConfigError, match=f"RATE_LIMIT must be like '1200/minute'.*got {text!r}"):
            check_rate_limit(text)
