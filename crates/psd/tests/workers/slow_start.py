#!/usr/bin/env python3
"""An HTTP worker (psd's socket, fd 3) that takes 2 seconds to start, as a
Python data app or R Shiny does. It says its pid and the session psd named
in the request; /state writes to its PSD_STATE_URL and says the status."""
import os
import socket
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

time.sleep(float(os.environ.get("START_SECONDS", "2")))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status = ""
        if self.path == "/state":
            put = urllib.request.Request(os.environ["PSD_STATE_URL"] + "k", data=b"v", method="PUT")
            try:
                status = urllib.request.urlopen(put).status
            except urllib.error.HTTPError as e:
                status = e.code
        body = "pid={} session={} env_session={} state={}\n".format(
            os.getpid(), self.headers.get("X-Psd-Session-Id"),
            os.environ.get("PSD_SESSION_ID", "none"), status).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


sock = socket.socket(fileno=3)
server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
server.socket.close()
server.socket = sock
server.serve_forever()
