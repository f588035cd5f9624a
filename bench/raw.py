"""Baselines: the least a server could do to send or receive the same bytes over HTTP/1.1.

    python -m bench.raw sendfile FILE...   # GET: the files back to back, socket.sendfile
    python -m bench.raw receive DIR        # POST/PUT: the body written to a file in DIR

Each runs in a process of its own (so its CPU time is its own), prints `port N` once it
listens, and serves one thread per connection until killed. `sendfile` is the fastest
thing Python can do for a download (the kernel copies from the page cache, no user-space
copy); `receive` reads the body with `recv_into` into one reused buffer and writes it to
a new file, which is all an upload must do.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

RECEIVE_BUFFER_BYTES = 1024 * 1024


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """The request's head (through the blank line) and whatever body bytes came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise ConnectionError("closed before the head ended")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def send_files(files: list[Path]) -> Callable[[socket.socket], None]:
    total = sum(path.stat().st_size for path in files)

    def handle(conn: socket.socket) -> None:
        _read_head(conn)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode())
        for path in files:
            with open(path, "rb") as file:
                conn.sendfile(file)

    return handle


def receive_into(directory: Path) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        head, first = _read_head(conn)
        if b"100-continue" in head.lower():
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        remaining = _content_length(head) - len(first)
        buffer = bytearray(RECEIVE_BUFFER_BYTES)
        view = memoryview(buffer)
        with open(directory / uuid.uuid4().hex, "wb", buffering=0) as out:
            out.write(first)
            while remaining > 0:
                got = conn.recv_into(view, min(remaining, len(buffer)))
                if not got:
                    raise ConnectionError("closed before the body ended")
                out.write(view[:got])
                remaining -= got
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    return handle


def serve(handle: Callable[[socket.socket], None]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"port {listener.getsockname()[1]}", flush=True)

    def run(conn: socket.socket) -> None:
        with conn:
            handle(conn)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=run, args=(conn,), daemon=True).start()


class RawServer:
    """`python -m bench.raw` in a subprocess: `with RawServer("sendfile", *files) as raw`."""

    def __init__(self, kind: str, *args: Path) -> None:
        self.argv = [sys.executable, "-m", "bench.raw", kind, *map(str, args)]

    def __enter__(self) -> RawServer:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"the raw server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/"
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()

    @property
    def pid(self) -> int:
        return self.process.pid


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "sendfile":
        serve(send_files([Path(arg) for arg in args]))
    elif kind == "receive":
        serve(receive_into(Path(args[0])))
    else:
        raise SystemExit(f"unknown baseline {kind!r}: sendfile or receive")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
