#!/usr/bin/env python3
"""Test worker for `Worker stdio`, misbehaving on request (by path):
  /garbage  writes a line that is not JSON     /unknown  answers another id
  /binary   answers bytes as body_base64      /stream   streams ?lines=N, ?ms=M apart
  /echo     echoes the body it got            other     a counter line
  /mute     closes its stdout and keeps running
  /chatter  writes ?n= lines for ids nobody asked about, then answers
  /huge     writes one line of 17 MiB
WebSocket messages are echoed with a count of this session's messages."""
import base64
import json
import os
import sys
import time
from urllib.parse import parse_qs

count = 0
ws_count = 0


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    msg = json.loads(line)
    if "ws" in msg:
        if "message" in msg:
            ws_count += 1
            send({"ws": msg["ws"], "message": f"#{ws_count} {msg['message']} pid={os.getpid()}"})
        continue
    path, q = msg["path"], parse_qs(msg["query"])
    if path == "/mute":
        sys.stdout.close()
        os.close(1)
        time.sleep(3600)
    if path == "/chatter":
        for i in range(int(q.get("n", ["1000"])[0])):
            sys.stdout.write(json.dumps({"id": 10**9 + i, "body": "?"}) + "\n")
        send({"id": msg["id"], "body": "done"})
        continue
    if path == "/huge":
        sys.stdout.write(json.dumps({"id": msg["id"], "body": "h" * (17 << 20)}) + "\n")
        sys.stdout.flush()
        continue
    if path == "/garbage":
        print("this is not json {", flush=True)
        continue
    if path == "/unknown":
        send({"id": msg["id"] + 1000, "status": 200, "body": "wrong id"})
        continue
    if path == "/binary":
        send({"id": msg["id"], "headers": [["Content-Type", "application/octet-stream"]],
              "body_base64": base64.b64encode(bytes(range(256))).decode()})
        continue
    if path == "/echo":
        body = msg.get("body")
        if body is None:
            body = base64.b64decode(msg["body_base64"]).hex()
        send({"id": msg["id"], "body": f"{msg['method']} {body}"})
        continue
    if path == "/stream":
        lines, ms = int(q.get("lines", ["3"])[0]), int(q.get("ms", ["500"])[0])
        send({"id": msg["id"], "status": 200, "headers": [["Content-Type", "text/plain"]], "stream": True})
        for i in range(1, lines + 1):
            send({"id": msg["id"], "body": f"line {i} at {time.time():.3f}\n"})
            if i < lines:
                time.sleep(ms / 1000)
        send({"id": msg["id"], "end": True})
        continue
    count += 1
    send({"id": msg["id"], "status": 200, "headers": [["Content-Type", "text/plain"]],
          "body": f"pid={os.getpid()} count={count} path={path} session={msg['session']} access={msg['access']} user={msg.get('user', '-')}\n"})
