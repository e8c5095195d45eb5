"""The locust load profile's stream subscribers turn a gap, a repeat or a reset into a locust
failure. Checked on scripted events in a subprocess: importing locust monkey-patches the whole
process for gevent. (The 30-second run against a real deployment: tests/e2e/test_locust.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Feeds events to each subscriber kind's checks and prints the locust request events they
# fire as JSON: [request_type, name, failed].
CHECKS = r"""
import json, sys
import httpx
from httpx_sse import EventSource
from locust.env import Environment
from loadtests.locustfile import ACCOUNTS, Account, SseSubscriber, WebSocketSubscriber
from service.pb import duckcast_pb2 as pb

ACCOUNTS.append(Account("someone", "token"))

env = Environment(user_classes=[SseSubscriber, WebSocketSubscriber], host="http://unused")
fired = []
env.events.request.add_listener(
    lambda request_type, name, exception, **kw: fired.append(
        [request_type, name, exception is not None]
    )
)
item = '"updated_at": "2030-01-01T00:00:00Z"'
sse = SseSubscriber(env)
sse.on_start()
sse.last = 10
blocks = [
    'id: 11\nevent: item_created\ndata: {"id": 1, %s}' % item,
    'id: 13\nevent: item_updated\ndata: {"id": 1, %s}' % item,
    ": keep-alive",
    'id: 13\nevent: item_deleted\ndata: {"id": 1}',
    'id: 12\nevent: item_deleted\ndata: {"id": 1}',
    'id: 14\nevent: item_deleted\ndata: {"id": 1}',
    'id: 20\nevent: reset\ndata: {"seq": 20}',
    'id: 21\nevent: item_deleted\ndata: {"id": 1}',
]
body = "".join(block + "\n\n" for block in blocks).encode()  # one stream, as on the wire
response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
for event in EventSource(response).iter_sse():
    sse.sse_event(event)
ws = WebSocketSubscriber(env)
ws.on_start()
ws.last = 10
for seq in (11, 12, 12, 14):
    ws.received(pb.DomainEvent(type=pb.DELETED, seq=seq, deleted_id=1), 0)
print(json.dumps({"fired": fired, "sse_last": sse.last, "ws_last": ws.last}))
"""


def test_subscriber_checks_fail_on_gaps_repeats_and_resets() -> None:
    """Events 11, 13 (gap), 13 and 12 (repeats), 14, reset to 20, 21 over SSE, and 11, 12, 12
    (repeat), 14 (gap) over WebSocket: every event counts once as itself, and each
    irregularity is one failed request."""
    run = subprocess.run(
        [sys.executable, "-c", CHECKS], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    failed = [(kind, name) for kind, name, bad in result["fired"] if bad]
    assert failed == [
        ("SSE", "seq gap"),
        ("SSE", "seq repeated"),
        ("SSE", "seq repeated"),
        ("SSE", "reset"),
        ("WS", "seq repeated"),
        ("WS", "seq gap"),
    ]
    passed = [(kind, name) for kind, name, bad in result["fired"] if not bad]
    assert passed == [
        ("SSE", "item_created"),
        ("SSE", "item_updated"),
        ("SSE", "item_deleted"),
        ("SSE", "item_deleted"),
        ("WS", "item_deleted"),
        ("WS", "item_deleted"),
        ("WS", "item_deleted"),
    ]
    assert (result["sse_last"], result["ws_last"]) == (21, 14)
