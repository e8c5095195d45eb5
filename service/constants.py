"""Every Redis key and channel name Duckcast uses, in one place."""

from __future__ import annotations

# One message per commit batch: a serialized duckcast.store.v1.EventBatch.
EVENTS_CHANNEL = "duckcast:events:v1"
