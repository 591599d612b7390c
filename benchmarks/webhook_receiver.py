"""``python -m benchmarks.webhook_receiver PORT``: a webhook endpoint for the
delivery benchmark, in its own process so it never shares the dispatcher's loop.

``POST /hooks`` answers 204 and notes, per request, the seconds from the event's
``createdAt`` (its transaction's time) to its arrival; ``GET /stats`` returns
``{"count", "latencies", "first", "last"}`` (arrival times, epoch seconds);
``POST /reset`` forgets everything.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

import orjson
import uvloop
from aiohttp import web


def main() -> None:
    """Serves on 127.0.0.1:PORT until killed."""
    port = int(sys.argv[1])
    latencies: list[float] = []
    arrivals: list[float] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        created = orjson.loads(body).get("createdAt")
        if created:
            latencies.append(now - datetime.fromisoformat(created).timestamp())
        arrivals.append(now)
        return web.Response(status=204)

    async def stats(_request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(
                {
                    "count": len(arrivals),
                    "latencies": latencies,
                    "first": min(arrivals, default=0.0),
                    "last": max(arrivals, default=0.0),
                }
            ),
            content_type="application/json",
        )

    async def reset(_request: web.Request) -> web.Response:
        latencies.clear()
        arrivals.clear()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
