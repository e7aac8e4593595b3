#!/usr/bin/env python3
"""Test worker: flup, multithreaded, sleeps ?ms=N before answering, so several
requests of one session can be seen running at the same time."""
import os
import time
from urllib.parse import parse_qs

from flup.server.fcgi import WSGIServer


def app(environ, start_response):
    ms = int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["0"])[0])
    time.sleep(ms / 1000)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("pid=%d\n" % os.getpid()).encode()]


if __name__ == "__main__":
    WSGIServer(app, multithreaded=True).run()
