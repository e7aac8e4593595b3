#!/usr/bin/env python3
"""A psd worker in Python with flup: one process per session, so `count` is
that session's own. WSGIServer() without bindAddress accepts on fd 0, where
psd puts the listening socket. The count is kept in the session's state
(PSD_STATE_URL), so a resumed session goes on counting where it was."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))

from flup.server.fcgi import WSGIServer  # noqa: E402
from psd_state import State  # noqa: E402

state = State()
count = int(state.get("count") or 0) if state else 0


def app(environ, start_response):
    global count
    count += 1
    if state:
        state.put("count", str(count))
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    start_response("200 OK", [("Content-Type", "text/plain")])
    line = "pid=%d count=%d resumed=%s body=%d session=%s\n" % (
        os.getpid(), count, os.environ.get("PSD_RESUMED", "0"), len(body),
        environ.get("PSD_SESSION_ID", ""))
    return [line.encode()]


if __name__ == "__main__":
    print("counter.py %d started" % os.getpid(), file=sys.stderr, flush=True)
    WSGIServer(app, multithreaded=False).run()
