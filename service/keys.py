"""The one secret every process of a deployment shares, and the keys derived from it.

Where the secret comes from, first match wins:
1. `DUCKCAST_SECRET_KEY` (the value itself);
2. `DUCKCAST_SECRET_KEY_FILE` (a file holding it: Docker/compose secrets);
3. development only: `DATA_DIR/secret_key`, generated on first start (32 random bytes, hex,
   mode 0600) and reused after. Every process started on the same data dir (serve, the
   store, gunicorn workers) reads the same file; `duckcast serve --workers N` resolves it
   once and hands its children the file's path.
Production refuses to start without 1 or 2. Nothing signs with a value that is written down
anywhere: there is no built-in default, and the placeholders people copy are refused.

Each use gets its own key (HKDF-SHA256 with a purpose label), so a key that one use exposes
(e.g. a backplane MAC seen on the wire) says nothing about the others, and the secret itself
never leaves the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings

logger = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32
SECRET_FILE_NAME = "secret_key"
# Values that appear in examples and docs; a deployment that copied one signs with a public key.
PLACEHOLDERS = frozenset(
    {"", "changethis", "change-me", "changeme", "secret", "dev-insecure-secret", "duckcast"}
)


class SecretError(Exception):
    """The secret is missing, unreadable or unfit. The message never contains the value."""


@dataclass(frozen=True, slots=True)
class Keys:
    token: bytes  # signs session tokens
    store: bytes  # the worker <-> store handshake
    backplane: bytes  # MACs on published event batches
    source: str  # where the secret came from (a setting name or a path), for messages

    @classmethod
    def from_secret(cls, secret: bytes, source: str = "given") -> Keys:
        return cls(
            derive(secret, "token"), derive(secret, "store"), derive(secret, "backplane"), source
        )


def derive(secret: bytes, purpose: str) -> bytes:
    """HKDF-SHA256 (RFC 5869), one output block, `purpose` as the info string."""
    prk = hmac.new(b"duckcast-v1", secret, hashlib.sha256).digest()
    return hmac.new(prk, f"duckcast:{purpose}".encode() + b"\x01", hashlib.sha256).digest()


def secret_file(settings: Settings) -> Path:
    return settings.data_dir.resolve() / SECRET_FILE_NAME


def load_keys(settings: Settings) -> Keys:
    secret, source = load_secret(settings)
    return Keys.from_secret(secret, source)


def load_secret(settings: Settings) -> tuple[bytes, str]:
    """The secret and where it came from; SecretError if there is none fit for use."""
    production = settings.environment == "production"
    if settings.secret_key is not None:
        source = "DUCKCAST_SECRET_KEY"
        secret = settings.secret_key.get_secret_value().encode()
    elif settings.secret_key_file is not None:
        source = f"DUCKCAST_SECRET_KEY_FILE ({settings.secret_key_file})"
        try:
            secret = settings.secret_key_file.read_bytes().strip()
        except OSError as exc:
            raise SecretError(f"cannot read {source}: {exc.strerror or exc}") from None
    elif production:
        raise SecretError(
            "production needs DUCKCAST_SECRET_KEY or DUCKCAST_SECRET_KEY_FILE "
            f"(at least {MIN_SECRET_BYTES} random bytes, e.g. `openssl rand -hex 32`)"
        )
    else:
        path = secret_file(settings)
        return generated_secret(path), str(path)
    if secret.decode(errors="replace").strip().lower() in PLACEHOLDERS:
        raise SecretError(f"{source} is a placeholder; use `openssl rand -hex 32`")
    if len(secret) < MIN_SECRET_BYTES:
        if production:
            raise SecretError(
                f"{source} is {len(secret)} bytes; production needs at least {MIN_SECRET_BYTES}"
            )
        logger.warning(
            "%s is shorter than %d bytes: fine for a test, not for real use",
            source,
            MIN_SECRET_BYTES,
        )
    return secret, source


def generated_secret(path: Path) -> bytes:
    """The secret kept in `path`, created (0600, atomically) if it does not exist yet.

    Written to a private temporary file and linked into place: two processes starting at once
    on one data dir both end up with whichever file won, never with half a file."""
    try:
        return _read_private(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_hex(32).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(value + b"\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_private(path)  # another process was first: use its secret
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    logger.info("generated a secret key in %s (mode 0600); keep it with the data", path)
    return value


def _read_private(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & 0o077:
        logger.warning("%s was readable by others; setting mode 0600", path)
        path.chmod(0o600)
    secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(f"{path} holds {len(secret)} bytes, not a secret; remove it to renew")
    logger.info("using the secret key in %s", path)
    return secret
