"""Settings, read from the environment (prefix DUCKCAST_) and overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUCKCAST_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    # No default value: see service.keys (generated in the data dir in development only).
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    data_dir: Path = Path("data")

    # Where workers find the store: "unix:/path/store.sock" or "tcp:host:port".
    # Unset: the store runs inside the API process (embedded mode, one process only).
    store_url: str | None = None
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DUCKCAST_REDIS_URL", "REDIS_URL")
    )

    host: str = "127.0.0.1"
    port: int = 8000
    # The path prefix a proxy serves the API under ("/dc") and strips: uvicorn's root_path.
    root_path: str = Field(default="", pattern=r"^(/[^/]+)*$")
    workers: int = Field(default=1, ge=1)

    token_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    cookie_name: str = "duckcast_session"
    cookie_secure: bool = False

    # A 1,000-item bulk create with 10,000-character descriptions is ~10 MB of JSON.
    max_body_bytes: int = Field(default=16 * MiB, ge=1024)
    upload_max_bytes: int = Field(default=10 * MiB, ge=1)
    # Per user, enforced by the store (so every worker counts the same uploads).
    upload_quota_bytes: int = Field(default=256 * MiB, ge=0)
    upload_rate_per_minute: int = Field(default=30, ge=1)
    # How often each worker asks the store for tokens revoked elsewhere (logout on another
    # worker); the bound on how long a revoked token still works there.
    revocation_poll_ms: float = Field(default=250.0, ge=10, le=10_000)
    # The request head (request line + headers): beyond either limit 431 and the connection is
    # closed; a head not complete this long after its request (or the connection) began: closed.
    max_header_bytes: int = Field(default=64 * 1024, ge=4096)
    max_header_lines: int = Field(default=100, ge=16)
    header_timeout_seconds: float = Field(default=10.0, gt=0)

    # Failed logins allowed per window before 429 (service/api/throttle.py): per (username,
    # client address), per address, per username; counted in Redis when there is one.
    login_failures_per_name_and_address: int = Field(default=5, ge=1)
    login_failures_per_address: int = Field(default=20, ge=1)
    login_failures_per_name: int = Field(default=100, ge=1)
    login_window_seconds: int = Field(default=900, ge=1)
    # argon2 hashes one worker computes at once, and how many more may wait (then 503).
    password_hash_threads: int = Field(default=1, ge=1, le=64)
    password_hash_queue: int = Field(default=32, ge=0)

    # Python's young-generation GC threshold once a server process has started (service/
    # gcpolicy.py: start-up objects frozen out of collections too); 0 keeps Python's defaults.
    gc_threshold: int = Field(default=10_000, ge=0)

    store_timeout_seconds: float = Field(default=5.0, gt=0)
    store_max_in_flight: int = Field(default=1024, ge=1)

    # Group commit: when the previous batch held several writes (concurrent writers), how long
    # the writer waits for more before it gathers the next one; a lone writer never waits.
    # 0 batches only what queued up during the previous commit.
    commit_window_ms: float = Field(default=2.0, ge=0, le=100)
    max_batch: int = Field(default=2000, ge=1)
    read_threads: int = Field(default=4, ge=1, le=64)
    # DuckDB's own worker threads (its `threads` option). One: the store's queries are small
    # (a group commit's few statements, point reads, pages), and a second thread only added
    # wake-ups, ~80 us of CPU per create under concurrent creates (README, Performance).
    # Raise it for large `q` searches on a machine with idle cores.
    duckdb_threads: int = Field(default=1, ge=1, le=256)
    # Store caches, bounded by an estimate of the memory their entries hold (see
    # service/store/cache.py); "not found" answers are kept apart, by count.
    item_cache_bytes: int = Field(default=64 * MiB, ge=0)
    miss_cache_entries: int = Field(default=10_000, ge=0)
    page_cache_bytes: int = Field(default=16 * MiB, ge=0)
    event_retention: int = Field(default=100_000, ge=100)  # events kept for resume
    # Each worker keeps its newest events, encoded, in one ring bounded by count and by memory;
    # a subscriber behind the ring pages from the store's event log instead.
    stream_ring_events: int = Field(default=10_000, ge=1)
    stream_ring_mib: int = Field(default=64, ge=1)
    # A subscriber whose socket write has been blocked this long while its position fell out
    # of the ring is dropped (SSE `event: overflow`, WebSocket 4008); it resumes from its seq.
    stream_stall_seconds: float = Field(default=2.0, gt=0, le=300)
    # Backplane messages a worker's relay may hold before delivering them; over it they are
    # dropped and the relay fetches the events from the store's log instead (bounded memory).
    relay_inbox: int = Field(default=1000, ge=1)
    # Per worker: hot items and unfiltered first list pages, kept exact by the event stream
    # (service/realtime/readcache.py). 0 turns the cache off.
    read_cache_bytes: int = Field(default=32 * MiB, ge=0)
    # Subscribers are woken at most once per this interval, with everything committed since:
    # fewer, larger writes per connection for a few ms of latency. 0 wakes them at once.
    # 25 ms, not less: at 1,000 subscribers x 100 writes/s on 2 cores, 10 ms meant about one
    # socket write per event per subscriber and the workers fell behind for good (p99 5-12 s);
    # 25 ms coalesces SSE writes and wake-ups enough to keep up (README, Performance).
    stream_flush_ms: float = Field(default=25.0, ge=0, le=1000)

    # service/logging.py: JSON lines, or text on a terminal (auto); one line per request.
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def database_path(self) -> Path:
        return self.data_dir / "duckcast.duckdb"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"
