#!/usr/bin/env python3
"""A psd `http` worker with nothing but Python's standard library.

It takes its listening socket from fd 3 when psd passes one (systemd socket
activation: LISTEN_FDS=1 and LISTEN_PID equal to our pid), else binds PORT.
One process per session, so `count` is the session's own; a thread per
connection, since psd sends one session's requests side by side (an HTTP
worker's default `WorkerConcurrency` is 16): a server that takes one
connection at a time would leave the second waiting behind the first,
which psd keeps open for the next request.

  /            a counter line, with what psd forwarded
  /redirect    302 to /done (psd puts the <Location> prefix back)
  /cookie      sets a cookie with Path=/ (psd rewrites the path too)
  /slow        slowprint: LINES lines, one every MS milliseconds, streamed
"""
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

count = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global count
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/redirect":
            return self.reply(302, b"", [("Location", "/done")])
        if url.path == "/cookie":
            return self.reply(200, b"cookie set\n", [("Set-Cookie", "theme=dark; Path=/")])
        if url.path == "/slow":
            return self.slowprint(int(query.get("lines", ["3"])[0]), int(query.get("ms", ["500"])[0]))
        count += 1
        h = self.headers
        body = (
            f"pid={os.getpid()} count={count} path={url.path} "
            f"session={h.get('X-Psd-Session-Id')} access={h.get('X-Psd-Access')} "
            f"xff={h.get('X-Forwarded-For')} proto={h.get('X-Forwarded-Proto')} "
            f"host={h.get('X-Forwarded-Host')} prefix={h.get('X-Forwarded-Prefix')} "
            f"user={h.get('X-Remote-User')} groups={h.get('X-Remote-Groups')}\n"
        ).encode()
        self.reply(200, body)

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = self.read_chunked()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.reply(200, f"pid={os.getpid()} body={len(data)}\n".encode())

    def read_chunked(self):
        """The body of a chunked request (http.server leaves that to us)."""
        data = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    def reply(self, status, body, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def slowprint(self, lines, ms):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(1, lines + 1):
            chunk = f"line {i} at {time.time():.3f}\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            if i < lines:
                time.sleep(ms / 1000)
        self.wfile.write(b"0\r\n\r\n")


def server():
    if os.environ.get("LISTEN_FDS") == "1" and os.environ.get("LISTEN_PID") == str(os.getpid()):
        sock = socket.socket(fileno=3)
        httpd = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
        httpd.socket.close()
        httpd.socket = sock
        return httpd
    return ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Handler)


if __name__ == "__main__":
    print(f"app.py {os.getpid()} started", file=sys.stderr, flush=True)
    server().serve_forever()
