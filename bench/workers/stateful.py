#!/usr/bin/env python3
"""One small app whose every request reads and updates a ~100 KB per-user
state, in the two designs bench/stateful.py compares. Python + flup both ways.

- Under psd (no BENCH_REDIS_PORT): one process per session keeps its state
  as a Python object. It loads it from PSD_STATE_URL when it starts (a
  resumed session goes on where it was) and saves it there every
  BENCH_SAVE_EVERY requests and when it is stopped (psd's idle timeout).
- Stateless (BENCH_REDIS_PORT set): a flup pre-fork pool behind nginx on
  BENCH_BIND_PORT; each request loads the user's state from Redis (key from
  the `sid` cookie), updates it and stores it back, as a stateless web app
  with a Redis session store does.

The update is the same: a request counter and one of the 1000 items changed.
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))

ITEMS = 1000
SAVE_EVERY = int(os.environ.get("BENCH_SAVE_EVERY", "25"))


def fresh():
    """A new user's state: 1000 items of ~100 bytes, ~100 KB as JSON."""
    return {"count": 0, "items": [{"id": i, "n": 0, "text": "%04d" % i + "x" * 64} for i in range(ITEMS)]}


def update(doc):
    doc["count"] += 1
    item = doc["items"][doc["count"] % ITEMS]
    item["n"] += 1
    return ("count=%d item=%d n=%d\n" % (doc["count"], item["id"], item["n"])).encode()


def respond(start_response, body):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def in_memory():
    from flup.server.fcgi import WSGIServer
    from psd_state import State

    state = State()
    saved = state.get("doc") if state else None
    doc = json.loads(saved) if saved else fresh()
    unsaved = 0

    def save():
        nonlocal unsaved
        if state and unsaved:
            state.put("doc", json.dumps(doc))
            unsaved = 0

    def app(environ, start_response):
        nonlocal unsaved
        body = update(doc)
        unsaved += 1
        if unsaved >= SAVE_EVERY:
            save()
        return respond(start_response, body)

    def stop(*_):
        save()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    WSGIServer(app, multithreaded=False).run()


def stateless(redis_port, bind_port, children):
    import redis
    from flup.server.fcgi_fork import WSGIServer

    store = redis.Redis(host="127.0.0.1", port=redis_port)

    def app(environ, start_response):
        sid = "anonymous"
        for part in environ.get("HTTP_COOKIE", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "sid":
                sid = value
        key = "session:" + sid
        saved = store.get(key)
        doc = json.loads(saved) if saved else fresh()
        body = update(doc)
        store.set(key, json.dumps(doc))
        return respond(start_response, body)

    WSGIServer(app, bindAddress=("127.0.0.1", bind_port), minSpare=children, maxSpare=children,
               maxChildren=children).run()


if __name__ == "__main__":
    if os.environ.get("BENCH_REDIS_PORT"):
        stateless(int(os.environ["BENCH_REDIS_PORT"]), int(os.environ["BENCH_BIND_PORT"]),
                  int(os.environ.get("BENCH_CHILDREN", "16")))
    else:
        in_memory()
