#!/usr/bin/env python3
"""A psd `stdio` worker: JSON lines in, JSON lines out. One process per
session, so `count` is the session's own. WebSocket messages arrive as
{"ws": N, "message": ...} lines and are answered the same way."""
import json
import os
import sys

count = 0
for line in sys.stdin:
    msg = json.loads(line)
    if "ws" in msg:
        if "message" in msg:
            print(json.dumps({"ws": msg["ws"], "message": msg["message"].upper()}), flush=True)
        continue
    count += 1
    body = f"pid={os.getpid()} count={count} {msg['method']} {msg['path']}\n"
    reply = {"id": msg["id"], "status": 200, "headers": [["Content-Type", "text/plain"]], "body": body}
    print(json.dumps(reply), flush=True)
