#!/usr/bin/env python3
"""A small forward-auth server, as an SSO's (oauth2-proxy's, Authelia's)
verify endpoint behaves, for psd's AuthForward tests:

    forward_auth.py PORT

By the request's `X-Token` header:
  good     -> 200, X-Remote-User: ann, X-Remote-Groups: admins
  bad      -> 401, WWW-Authenticate: Bearer realm="sso"
  (absent) -> 302 to http://sso.example/login?rd=<X-Forwarded-Uri>
Every answer says what it was asked in `X-Seen: METHOD X-Forwarded-Method
X-Forwarded-Uri body-length`. Serves until killed.
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length", "0") or 0)
        seen = f"{self.command} {self.headers.get('X-Forwarded-Method')} {self.headers.get('X-Forwarded-Uri')} {length}"
        token = self.headers.get("X-Token")
        if token == "good":
            self.send_response(200)
            self.send_header("X-Remote-User", "ann")
            self.send_header("X-Remote-Groups", "admins")
            body = b""
        elif token == "bad":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="sso"')
            body = b"bad token\n"
        else:
            self.send_response(302)
            uri = self.headers.get("X-Forwarded-Uri", "/")
            self.send_header("Location", "http://sso.example/login?rd=" + quote(uri, safe=""))
            body = b"log in first\n"
        self.send_header("X-Seen", seen)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
