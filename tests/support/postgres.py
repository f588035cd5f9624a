"""A real PostgreSQL server for the tests: Debian's package (the test command installs it),
started in a temporary folder on a free port of 127.0.0.1, as an unprivileged user (the
package's `postgres`) when the tests run as root, and stopped at the end.

Each test that wants one gets a database of its own on it (`fresh_database`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

# Speed over durability: a test server's data is thrown away.
SETTINGS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=300 -c shared_buffers=64MB"
)
START_TIMEOUT_S = 60
USER = "refresher"


def binaries() -> Path:
    """The folder of PostgreSQL's server programs (Debian keeps them out of PATH)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not versions:
        raise RuntimeError(
            "PostgreSQL's server is not installed: the test command installs Debian's "
            "`postgresql` package (scripts/test)"
        )
    return Path(versions[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    root: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"


def _as_owner(command: list[str]) -> list[str]:
    """`command` as the unprivileged owner of the cluster (the server refuses root)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def running_server(root: Path) -> Iterator[PostgresServer]:
    """Make a cluster under `root`, start it, yield it, stop it."""
    bin_dir = binaries()
    data = root / "data"
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                   "--no-sync", "-E", "UTF8", "--locale=C"]),
        check=True, capture_output=True, timeout=START_TIMEOUT_S,
    )  # fmt: skip
    port = free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} {SETTINGS}"
    subprocess.run(
        _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                   "-t", str(START_TIMEOUT_S), "-l", str(root / "server.log"), "start"]),
        check=True, capture_output=True, timeout=START_TIMEOUT_S + 10,
    )  # fmt: skip
    try:
        yield PostgresServer(root, port)
    finally:
        subprocess.run(
            _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True, timeout=START_TIMEOUT_S,
        )  # fmt: skip


def fresh_database(server: PostgresServer) -> str:
    """Make an empty database on `server`; return its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)


def drop_database(server: PostgresServer, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
