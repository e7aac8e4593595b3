#!/usr/bin/env python3
"""An HTTP worker on psd's socket (fd 3) that, asked for /die, leaves a
child holding the request's connection and exits without answering: psd
must fail the request at once and take the child down with the worker."""
import os
import socket
import subprocess

listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    if head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"/die"]:
        subprocess.Popen(["sleep", "60"], pass_fds=(conn.fileno(), listener.fileno()))
        os._exit(3)
    body = "pid={}\n".format(os.getpid()).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    conn.close()
