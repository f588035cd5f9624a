"""Resumable-upload benchmark: one file sent through tus with its connection cut, resumed.

    python -m bench.resumable [--gib 1] [--cuts 3]

Makes one real video of exactly `--gib` GiB (as `bench.upload` does), declares it with
`POST /api/uploads` to the real service (a subprocess), and sends it in PATCHes of all
that is left, each cut off part-way (the socket closed with bytes still to go) at evenly
spaced points, `--cuts` times; after each cut it asks `HEAD` where to go on from, and the
last PATCH sends the rest. Reports the bytes sent again (sent in all minus the file's
size: what the service had not kept when a cut came), the service's RSS growth during
the upload over its memory just before it (target < 32 MiB), the throughput over the
whole (cuts included), and checks the bytes the service kept are the file's, to the byte.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import socket
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.service import PeakRss, Service, rss_bytes
from bench.upload import BLOCK_BYTES, GIB, MIB, make_upload
from bench.verdict import Row, below, table

TUS = {"Tus-Resumable": "1.0.0"}
SEND_BYTES = 1024 * 1024
# SO_LINGER on, zero seconds: close() resets the connection.
RESET_ON_CLOSE = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")


def _connection(service: Service) -> http.client.HTTPConnection:
    address = urlsplit(service.url)
    assert address.hostname is not None
    assert address.port is not None
    return http.client.HTTPConnection(address.hostname, address.port, timeout=120)


def _request(
    service: Service, method: str, path: str, headers: dict[str, str]
) -> http.client.HTTPResponse:
    connection = _connection(service)
    connection.request(method, path, headers={**TUS, **headers, **_auth(service)})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def _auth(service: Service) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.token}"}


def _patch(service: Service, location: str, upload: Path, offset: int, stop: int | None) -> int:
    """PATCH from `offset` declaring everything left; stop sending at `stop` (then cut the
    connection) or send all and read the answer. Return the bytes sent."""
    size = upload.stat().st_size
    address = urlsplit(service.url)
    assert address.hostname is not None
    assert address.port is not None
    sent = 0
    with (
        socket.create_connection((address.hostname, address.port)) as sock,
        open(upload, "rb") as file,
    ):
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Authorization: Bearer {service.token}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {size - offset}\r\n\r\n"
        )
        sock.sendall(head.encode())
        file.seek(offset)
        end = size if stop is None else stop
        while offset + sent < end:
            block = file.read(min(SEND_BYTES, end - offset - sent))
            sock.sendall(block)
            sent += len(block)
        if stop is None:
            answer = sock.recv(4096).decode(errors="replace")
            if not answer.startswith("HTTP/1.1 204"):
                raise RuntimeError(f"the last PATCH was answered: {answer[:200]}")
        else:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    return sent


def _offset(service: Service, location: str) -> int:
    """The service's offset once the cut PATCH has let go of the upload."""
    for _ in range(600):
        response = _request(service, "HEAD", location, {})
        offset = int(response.getheader("Upload-Offset") or 0)
        probe = _connection(service)
        headers = {**TUS, **_auth(service), "Upload-Offset": str(offset),
                   "Content-Type": "application/offset+octet-stream"}  # fmt: skip
        probe.request("PATCH", location, body=b"", headers=headers)
        status = probe.getresponse().status
        probe.close()
        if status == 204:
            return offset
        time.sleep(0.1)
    raise RuntimeError("the upload stayed held after a cut")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def measure(gib: float = 1.0, cuts: int = 3) -> list[Row]:
    size = int(gib * GIB)
    with tempfile.TemporaryDirectory(prefix="bench-resumable-") as scratch:
        root = Path(scratch)
        upload = root / "upload.mp4"
        print(f"resumable: making a {gib:g} GiB video ...", flush=True)
        make_upload(upload, size)
        wanted = _sha256(upload)
        env = {"MAX_UPLOAD_BYTES": str(size + MIB), "STORAGE_QUOTA_BYTES": str(4 * size + GIB)}
        with Service(root / "data", env) as service:
            # The name, "upload.mp4", in base64 as tus's metadata has it.
            naming = {"Upload-Length": str(size), "Upload-Metadata": "filename dXBsb2FkLm1wNA=="}
            declared = _request(service, "POST", "/api/uploads", naming)
            location = declared.getheader("Location")
            if declared.status != 201 or location is None:
                raise RuntimeError(f"declaring the upload was answered {declared.status}")
            before = rss_bytes(service.pid)
            sent, offsets = 0, [0]
            began = time.perf_counter()
            with PeakRss(service.pid) as watch:
                for cut in range(1, cuts + 1):
                    stop = size * cut // (cuts + 1)
                    sent += _patch(service, location, upload, offsets[-1], stop)
                    offsets.append(_offset(service, location))
                    print(f"  cut {cut}: sent to {stop}, the service has {offsets[-1]}", flush=True)
                sent += _patch(service, location, upload, offsets[-1], None)
            seconds = time.perf_counter() - began
            kept = root / "data" / "resumable" / location.rsplit("/", 1)[1]
            if _sha256(kept) != wanted:
                raise RuntimeError("the bytes the service kept differ from the file's")
    resent = sent - size
    print(f"  sent {sent} bytes for {size}: {resent} again; offsets {offsets}", flush=True)
    name = f"resumable upload, {gib:g} GiB, {cuts} cuts"
    return [
        Row(f"{name}: throughput", "MB/s", size / seconds / 1e6, note="cuts and resumes included"),
        Row(
            f"{name}: bytes sent again",
            "MiB",
            resent / MIB,
            note="what the service had not kept when each cut came",
        ),
        Row(
            f"{name}: service RSS growth",
            "MiB",
            (watch.peak - before) / MIB,
            None,
            below(32),
            note="the store's connections (each with its page cache) included",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--cuts", type=int, default=3)
    options = parser.parse_args(argv)
    rows = measure(options.gib, options.cuts)
    print("\n".join(table(rows)))
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
