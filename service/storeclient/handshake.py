"""The store protocol's connection handshake: both ends prove they hold the shared secret.

    client -> store   MAGIC, client nonce (32 bytes)
    store  -> client  store nonce (32 bytes)                      only after a correct MAGIC
    client -> store   HMAC(key, "client" | client nonce | store nonce)
    store  -> client  HMAC(key, "store"  | client nonce | store nonce)   only after a correct proof

`key` is derived from the secret for this use only (service.keys), so neither the secret nor
anything replayable crosses the wire: each proof covers a fresh nonce from the other side.
The store reads no request before the client's proof checks out, and writes nothing to a
client that did not open with MAGIC; a client sends no request (no password hash) before the
store has proven itself. Each side gives the whole exchange `within` seconds.

The frames that follow are authenticated by who opened the connection, not encrypted: run the
store on a Unix socket or a private network (compose's), or behind TLS where that is not so.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

MAGIC = b"DUCKCAST\x01"
NONCE_BYTES = 32
PROOF_BYTES = 32
TIMEOUT = 5.0


# A connection closed before sending one byte: a liveness probe (a healthcheck's TCP
# connect), not an attack; the store does not log it.
PROBE = "closed before sending anything"


class HandshakeError(Exception):
    """The peer did not prove the shared secret (or said nothing in time)."""


def _proof(key: bytes, role: bytes, client_nonce: bytes, store_nonce: bytes) -> bytes:
    return hmac.new(key, role + client_nonce + store_nonce, hashlib.sha256).digest()


async def client_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    key: bytes,
    within: float = TIMEOUT,
) -> None:
    """Prove the secret to the store and check its proof; HandshakeError otherwise."""
    client_nonce = secrets.token_bytes(NONCE_BYTES)
    try:
        async with asyncio.timeout(within):
            writer.write(MAGIC + client_nonce)
            store_nonce = await reader.readexactly(NONCE_BYTES)
            writer.write(_proof(key, b"client", client_nonce, store_nonce))
            proof = await reader.readexactly(PROOF_BYTES)
    except asyncio.IncompleteReadError:
        raise HandshakeError(
            "the store closed the connection during the handshake: "
            "it does not share this process's secret key"
        ) from None
    except TimeoutError:
        raise HandshakeError(f"no handshake from the store within {within:g}s") from None
    if not hmac.compare_digest(proof, _proof(key, b"store", client_nonce, store_nonce)):
        raise HandshakeError("the store did not prove the shared secret key")


async def store_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    key: bytes,
    within: float = TIMEOUT,
) -> str | None:
    """None once the client proved the secret; else why not (the caller closes the
    connection). Nothing is written to a client that does not open with MAGIC."""
    try:
        async with asyncio.timeout(within):
            try:
                opening = await reader.readexactly(len(MAGIC))
            except asyncio.IncompleteReadError as exc:
                return PROBE if not exc.partial else "closed during the handshake"
            # Checked before reading on: another protocol's first bytes are refused at once.
            if not hmac.compare_digest(opening, MAGIC):
                return "not a Duckcast store client"
            client_nonce = await reader.readexactly(NONCE_BYTES)
            store_nonce = secrets.token_bytes(NONCE_BYTES)
            writer.write(store_nonce)
            proof = await reader.readexactly(PROOF_BYTES)
    except asyncio.IncompleteReadError:
        return "closed during the handshake"
    except TimeoutError:
        return f"no handshake within {within:g}s"
    if not hmac.compare_digest(proof, _proof(key, b"client", client_nonce, store_nonce)):
        return "wrong key"
    writer.write(_proof(key, b"store", client_nonce, store_nonce))
    return None
