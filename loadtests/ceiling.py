"""The HTTP ceiling: a bare ASGI app that answers every request 200 with a small fixed JSON body.

`python -m loadtests.bench` runs it under the same gunicorn settings as the service
(`gunicorn -c deploy/gunicorn.conf.py --workers 2 loadtests.ceiling:app`), so the ratio
service/ceiling says how much of the machine's HTTP capacity the service's own work costs.
It reads (and discards) the request body, as a real handler must, and answers lifespan events
so the uvicorn worker starts the same way it does for the service.
"""

from __future__ import annotations

from typing import Any

BODY = b'{"status":"ok"}'
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    # Drain the request body: a POST's bytes are read, as any real endpoint would.
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
