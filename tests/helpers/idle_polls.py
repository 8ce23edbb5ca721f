"""
Many clients, each holding one long-poll open: the connection-abuse test
runs this in a subprocess, so that its clients cost the server under test
nothing but their connections.

Usage: idle_polls.py PORT CERTS_DIR USER PATH COUNT
Opens COUNT TLS connections to 127.0.0.1:PORT (at most 100 handshakes at a
time), sends ``GET PATH`` on each, prints ``sent`` once all are sent, then
waits for every answer and prints one JSON line: how many answers had each
status line, and how many connections failed (by exception name). If one
fails or is answered before all are sent, the rest are cancelled and the
JSON line printed at once.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections import Counter
from pathlib import Path


async def poll(
    port: int,
    context: ssl.SSLContext,
    path: str,
    handshakes: asyncio.Semaphore,
    sent: asyncio.Event,
    pending: list[int],
) -> str:
    async with handshakes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    pending[0] -= 1
    if pending[0] == 0:
        sent.set()
    answer = await reader.read()
    writer.close()
    return answer.split(b"\r\n", 1)[0].decode("latin-1")


async def main(port: int, certs: Path, user: str, path: str, count: int) -> None:
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(certs / f"{user}.pem", certs / f"{user}.key")
    handshakes = asyncio.Semaphore(100)
    sent = asyncio.Event()
    pending = [count]
    polls = [
        asyncio.ensure_future(poll(port, context, path, handshakes, sent, pending))
        for _ in range(count)
    ]
    waiting = asyncio.ensure_future(sent.wait())
    await asyncio.wait([waiting, *polls], return_when=asyncio.FIRST_COMPLETED)
    if sent.is_set():
        print("sent", flush=True)
    else:  # one failed (or was answered early): report at once
        for p in polls:
            p.cancel()
    results = await asyncio.gather(*polls, return_exceptions=True)
    outcome = Counter(
        type(r).__name__ if isinstance(r, BaseException) else r for r in results
    )
    print(json.dumps(dict(outcome)), flush=True)


if __name__ == "__main__":
    port, certs, user, path, count = sys.argv[1:]
    asyncio.run(main(int(port), Path(certs), user, path, int(count)))
