#!/usr/bin/env python3
"""An HTTP worker on psd's socket (fd 3) that, asked for /spin, burns CPU
until something stops it (RLimitCPU), and otherwise says its pid."""
import os
import socket
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/spin":
            while True:
                pass
        body = "pid={}\n".format(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


sock = socket.socket(fileno=3)
server = HTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
server.socket.close()
server.socket = sock
server.serve_forever()
