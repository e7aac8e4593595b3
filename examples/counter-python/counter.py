#!/usr/bin/env python3
"""A psd worker in Python with flup: one process per session, so `count` is
that session's own. WSGIServer() without bindAddress accepts on fd 0, where
psd puts the listening socket."""
import os
import sys

from flup.server.fcgi import WSGIServer

count = 0


def app(environ, start_response):
    global count
    count += 1
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
