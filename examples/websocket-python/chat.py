#!/usr/bin/env python3
"""A WebSocket chat per session, as a psd `http` worker, with PyPI's
`websockets`. Every session is its own process, so `history` is the
session's conversation: it survives reconnects of the same browser and is
never seen by another session. The listening socket comes from fd 3."""
import asyncio
import os
import socket
import sys

from websockets.asyncio.server import serve

history = []


async def talk(ws):
    async for message in ws:
        history.append(message)
        await ws.send(f"#{len(history)} {message} (session process {os.getpid()})")


async def main():
    if os.environ.get("LISTEN_FDS") == "1":
        server = serve(talk, sock=socket.socket(fileno=3))
    else:
        server = serve(talk, "127.0.0.1", int(os.environ.get("PORT", "8765")))
    async with server:
        print(f"chat.py {os.getpid()} ready", file=sys.stderr, flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main())
