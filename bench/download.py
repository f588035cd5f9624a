"""Download benchmark: our ZIP route against a raw `socket.sendfile` server, same bytes.

    python -m bench.download [--gib 2] [--clients 8]

Builds a finished job of `--gib` GiB of outputs in a temporary data dir, serves it with
the real service (a subprocess, as in production) and the same files with a minimal
HTTP/1.1 server that uses `socket.sendfile` (the fastest thing Python can do), and
downloads with curl: one client, then `--clients` at once. Prints throughput of each,
the ratios (targets: ours >= 0.85 of raw; 8 clients keep >= 0.85 of one client's
aggregate) and the service's RSS growth during the single download (target < 32 MiB).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path

from refresher import jobstore, outputstore
from refresher.db import connect, migrate
from refresher.status import JobStatus
from refresher.storage import Paths

PASSWORD = "benchmark-password"
CHUNK = 8 * 1024 * 1024


def make_job(paths: Paths, total_bytes: int, files: int = 8) -> tuple[str, list[Path]]:
    """A finished job of `files` outputs adding up to `total_bytes`; returns id and files."""
    paths.create()
    job_id = str(uuid.uuid4())
    job_dir = paths.job_dir(job_id)
    job_dir.mkdir(parents=True)
    block = os.urandom(CHUNK)
    per_file = total_bytes // files
    source = jobstore.NewFile(str(uuid.uuid4()), "creative.mp4", "uploads/x", 1, 10.0)
    outputs = []
    for index in range(1, files + 1):
        path = job_dir / f"{source.id}_var{index}.mp4"
        crc = 0
        with open(path, "wb") as out:
            written = 0
            while written < per_file:
                piece = block[: min(CHUNK, per_file - written)]
                out.write(piece)
                crc = zlib.crc32(piece, crc)
                written += len(piece)
        outputs.append((index, path, per_file, crc))
    conn = connect(paths.database)
    migrate(conn)
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    jobstore.insert_job(
        conn, job_id=job_id, files=[source], variations_per_video=files, seed=1, now=now,
        ttl_s=86_400,
    )  # fmt: skip
    for index, path, size, crc in outputs:
        outputstore.record_output(
            conn, job_id=job_id, file_id=source.id, now=now,
            output=outputstore.NewOutput(
                output_id=str(uuid.uuid4()), variation_index=index,
                path=paths.relative(path), size=size, crc32=crc, effects={},
            ),
        )  # fmt: skip
    jobstore.finish_job(conn, job_id, status=JobStatus.COMPLETED, error=None, now=now, ttl_s=86_400)
    jobstore.clear_uploads(conn, job_id)
    conn.execute("COMMIT")
    conn.close()
    return job_id, [path for _, path, _, _ in outputs]


def raw_sendfile_server(files: list[Path]) -> tuple[int, threading.Event]:
    """Serve the files back to back on `GET /` with socket.sendfile; return the port."""
    total = sum(path.stat().st_size for path in files)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
            conn.sendall(head.encode())
            for path in files:
                with open(path, "rb") as file:
                    conn.sendfile(file)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], stop


def curl_many(url: str, clients: int, headers: list[str] | None = None) -> tuple[int, float]:
    """Download `url` with `clients` curls at once; return total bytes and wall seconds."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}\n"]
    for header in headers or []:
        args += ["-H", header]
    started = time.perf_counter()
    procs = [subprocess.Popen([*args, url], stdout=subprocess.PIPE) for _ in range(clients)]
    total = sum(int(proc.communicate()[0]) for proc in procs)
    return total, time.perf_counter() - started


def rss_bytes(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else 0


def start_service(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "HOST": "127.0.0.1",
        "PORT": "0",
        "AUTH_PASSWORD": PASSWORD,
        "LOG_LEVEL": "WARNING",
        # As in production (Dockerfile): fewer malloc arenas keep the chunks that worker
        # threads read from piling up in per-thread arenas (129 -> 43 MiB for 8 clients).
        "MALLOC_ARENA_MAX": "2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "refresher", "serve", "--log-level", "INFO"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(r"listening on (http://\S+)", line):
            return process, match.group(1).rstrip(",")
    raise RuntimeError("service did not start")


def login(url: str) -> str:
    out = subprocess.run(
        ["curl", "-sS", "-H", "Content-Type: application/json", "-d",
         f'{{"password": "{PASSWORD}"}}', f"{url}/api/auth"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    token = re.search(r'"token":"([^"]+)"', out)
    assert token, out
    return token.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=8)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        paths = Paths(Path(scratch) / "data")
        print(f"making a {options.gib:g} GiB job...", flush=True)
        job_id, files = make_job(paths, int(options.gib * 1024**3))
        raw_port, stop_raw = raw_sendfile_server(files)
        service, url = start_service(paths.root)
        try:
            auth = [f"Authorization: Bearer {login(url)}"]
            download = f"{url}/api/jobs/{job_id}/download"
            raw = f"http://127.0.0.1:{raw_port}/"
            # The service's memory before it served any download: growth is counted from
            # here, so buffers kept after a first download count too.
            baseline = rss_bytes(service.pid)
            curl_many(download, 1, auth)  # warm the page cache and the code paths
            results = {}
            for name, target, headers in (("raw sendfile", raw, None), ("our ZIP", download, auth)):
                peak, before = 0, baseline
                done = threading.Event()

                def watch(before: int = before, done: threading.Event = done) -> None:
                    nonlocal peak
                    while not done.is_set():
                        peak = max(peak, rss_bytes(service.pid) - before)
                        time.sleep(0.02)

                watcher = threading.Thread(target=watch)
                watcher.start()
                one = curl_many(target, 1, headers)
                peak_one = peak
                many = curl_many(target, options.clients, headers)
                done.set()
                watcher.join()
                results[name] = (one, many, (peak_one, peak))
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=30)
            stop_raw.set()
    print(f"\n{'server':<14}{'1 client MB/s':>16}{f'{options.clients} clients MB/s':>20}")
    for name, ((bytes1, secs1), (bytes8, secs8), _) in results.items():
        print(f"{name:<14}{bytes1 / secs1 / 1e6:>16.0f}{bytes8 / secs8 / 1e6:>20.0f}")
    (raw1, rawt1), (raw8, rawt8), _ = results["raw sendfile"]
    (our1, ourt1), (our8, ourt8), (peak_one, peak_many) = results["our ZIP"]
    ours_single, raw_single = our1 / ourt1, raw1 / rawt1
    ours_many = our8 / ourt8
    print(f"\nours / raw, 1 client:        {ours_single / raw_single:.2f}  (target >= 0.85)")
    print(f"ours / raw, {options.clients} clients:       {ours_many / (raw8 / rawt8):.2f}")
    scaling = ours_many / ours_single
    print(f"ours, {options.clients} clients / 1 client:  {scaling:.2f}  (target >= 0.85)")
    print(f"service RSS growth, 1 download: {peak_one / 1024**2:.1f} MiB (target < 32)")
    print(f"service RSS growth, {options.clients} downloads at once: {peak_many / 1024**2:.1f} MiB")


if __name__ == "__main__":
    main()
