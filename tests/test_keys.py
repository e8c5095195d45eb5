"""Where the secret comes from (service.keys): never a value written down anywhere."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.config import Settings
from service.keys import (
    MIN_SECRET_BYTES,
    PLACEHOLDERS,
    SECRET_FILE_NAME,
    Keys,
    SecretError,
    derive,
    load_keys,
    load_secret,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_development_generates_a_private_secret_once_and_reuses_it(tmp_path: Path) -> None:
    """No secret configured: the first start writes DATA_DIR/secret_key (0600, 32 random
    bytes hex), later starts (and other processes on the data dir) read the same one."""
    settings = Settings(data_dir=tmp_path / "data")
    first, source = load_secret(settings)
    path = tmp_path / "data" / SECRET_FILE_NAME
    assert source == str(path.resolve())
    assert mode(path) == 0o600
    assert len(first) == 64 and int(first, 16)
    assert load_secret(Settings(data_dir=tmp_path / "data"))[0] == first
    assert load_secret(Settings(data_dir=tmp_path / "other"))[0] != first


def test_a_group_readable_secret_file_is_made_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    secret, _ = load_secret(settings)
    path = tmp_path / SECRET_FILE_NAME
    path.chmod(0o644)
    assert load_secret(settings)[0] == secret
    assert mode(path) == 0o600


def _generate(data_dir: str, out: multiprocessing.Queue[bytes]) -> None:
    out.put(load_secret(Settings(data_dir=Path(data_dir)))[0])


def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    """Four processes racing on an empty data dir all end up with the same secret (the file
    is linked into place whole; a loser reads the winner's)."""
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[bytes] = ctx.Queue()
    procs = [ctx.Process(target=_generate, args=(str(tmp_path), out)) for _ in range(4)]
    for p in procs:
        p.start()
    secrets = {out.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
    assert len(secrets) == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == [SECRET_FILE_NAME]  # no leftovers


def test_the_secret_file_setting(tmp_path: Path) -> None:
    """DUCKCAST_SECRET_KEY_FILE (compose secrets) is read, trailing newline stripped."""
    path = tmp_path / "duckcast_secret"
    path.write_text("f" * 40 + "\n")
    settings = Settings(data_dir=tmp_path / "data", secret_key_file=path)
    assert load_secret(settings)[0] == b"f" * 40
    assert not (tmp_path / "data" / SECRET_FILE_NAME).exists()  # nothing generated
    with pytest.raises(SecretError, match="cannot read DUCKCAST_SECRET_KEY_FILE"):
        load_secret(Settings(data_dir=tmp_path, secret_key_file=tmp_path / "missing"))


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"secret_key": SecretStr("short-but-unique-value-4711")},
        {"secret_key": SecretStr("changethis")},
    ],
    ids=["missing", "short", "placeholder"],
)
def test_production_refuses_a_missing_short_or_placeholder_secret(
    tmp_path: Path, given: dict[str, SecretStr]
) -> None:
    """Production starts only with a configured secret of at least 32 bytes, and the refusal
    names the settings, never the value."""
    settings = Settings(data_dir=tmp_path, environment="production", **given)
    with pytest.raises(SecretError) as refused:
        load_secret(settings)
    message = str(refused.value)
    assert "DUCKCAST_SECRET_KEY" in message
    for value in given.values():
        assert value.get_secret_value() not in message
    assert not (tmp_path / SECRET_FILE_NAME).exists()


def test_production_takes_a_long_secret_from_either_setting(tmp_path: Path) -> None:
    value = "p" * MIN_SECRET_BYTES
    by_value = Settings(data_dir=tmp_path, environment="production", secret_key=SecretStr(value))
    assert load_secret(by_value)[0] == value.encode()
    path = tmp_path / "s"
    path.write_text(value)
    by_file = Settings(data_dir=tmp_path, environment="production", secret_key_file=path)
    assert load_keys(by_file) == Keys.from_secret(value.encode(), load_keys(by_file).source)


@pytest.mark.parametrize("placeholder", sorted(PLACEHOLDERS - {""}))
def test_placeholders_are_refused_in_development_too(tmp_path: Path, placeholder: str) -> None:
    with pytest.raises(SecretError, match="placeholder"):
        load_secret(Settings(data_dir=tmp_path, secret_key=SecretStr(placeholder)))


def test_each_use_gets_its_own_key() -> None:
    keys = Keys.from_secret(b"x" * 32)
    assert len({keys.token, keys.store, keys.backplane}) == 3
    assert keys.token == derive(b"x" * 32, "token") != derive(b"y" * 32, "token")
    assert b"x" * 32 not in (keys.token + keys.store + keys.backplane)


def test_settings_never_show_the_secret() -> None:
    settings = Settings(secret_key=SecretStr("a-very-secret-value-that-is-long-enough"))
    assert "a-very-secret-value" not in repr(settings)
    assert "a-very-secret-value" not in str(settings.model_dump())
