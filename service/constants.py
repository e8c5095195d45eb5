"""Every Redis key and channel name Duckcast uses, in one place."""

from __future__ import annotations

# One message per commit batch: a serialized duckcast.store.v1.EventBatch.
EVENTS_CHANNEL = "duckcast:events:v1"

# Failed logins in the current window, one counter per scope ("name", "addr", "name+addr") and
# hashed subject (a sha256 prefix of the username and/or client address); expires with the window.
LOGIN_FAILURES_KEY = "duckcast:login-failures:v1:{scope}:{subject}"
