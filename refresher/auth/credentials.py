"""The team's shared password and the token secret: from the environment, or kept.

Either one, when not given in the environment, is generated on first run and kept, so a
restart neither changes the password nor logs anyone out: in the data directory (mode
0600) where one process owns it (`load`), in the store where several processes share it
(`load_shared`), so that a token one web process issued, and a job's signed links, work
on every other.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, text

from refresher.storage.paths import Paths, write_private_file

LOGGER = logging.getLogger(__name__)

# 12 URL-safe characters (72 bits): easy to paste, far beyond guessing under the
# login rate limit.
GENERATED_PASSWORD_BYTES = 9
TOKEN_SECRET_BYTES = 32


# Keys of the two in the store's `settings` table.
PASSWORD_SETTING = "auth_password"
TOKEN_SECRET_SETTING = "token_secret"

# Tells the signing key apart from any other use of the same secret.
SIGNING_KEY_CONTEXT = b"video-refresher signing key v1\0"


@dataclass(frozen=True)
class Credentials:
    password: str
    token_secret: bytes
    # Where the password came from: "environment" or the file that holds it.
    password_source: str

    @functools.cached_property
    def signing_key(self) -> bytes:
        """The key every token and link is signed with: the kept secret bound to the
        current password, so changing `AUTH_PASSWORD` ends every session and link (someone
        who left the team keeps nothing), while a restart ends none."""
        return hmac.digest(
            self.token_secret,
            SIGNING_KEY_CONTEXT + self.password.encode("utf-8", "surrogateescape"),
            "sha256",
        )

    def password_matches(self, attempt: str) -> bool:
        """Compare in constant time, so response timing does not leak the password."""
        return hmac.compare_digest(attempt.encode(), self.password.encode())


def _load_or_create(path: Path, make: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    write_private_file(path, make.encode())
    LOGGER.info("generated %s", path.name)
    return make


def load(paths: Paths, *, password: str | None, token_secret: str | None) -> Credentials:
    """Take each value from the arguments, else from its file, else generate and keep it.

    Blocking (file I/O): call from a thread.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    if password is not None:
        source = "environment"
    else:
        password = _load_or_create(
            paths.password_file, secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
        )
        source = str(paths.password_file)
    if token_secret is None:
        token_secret = _load_or_create(
            paths.token_secret_file, secrets.token_urlsafe(TOKEN_SECRET_BYTES)
        )
    return Credentials(
        password=password, token_secret=token_secret.encode(), password_source=source
    )


def _setting(conn: Connection, key: str, make: str) -> str:
    """The stored value of `key`, stored as `make` first if there was none (the first of
    several processes starting at once to store one wins; the others read it)."""
    conn.execute(
        text(
            "INSERT INTO settings (key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING"
        ),
        {"key": key, "value": make},
    )
    value: str = conn.execute(
        text("SELECT value FROM settings WHERE key = :key"), {"key": key}
    ).scalar_one()
    return value


def load_shared(conn: Connection, *, password: str | None, token_secret: str | None) -> Credentials:
    """Like `load`, but each value not given is kept in the store every process shares
    (run in a write transaction)."""
    source = "environment"
    if password is None:
        password = _setting(conn, PASSWORD_SETTING, secrets.token_urlsafe(GENERATED_PASSWORD_BYTES))
        source = "the database's settings table"
    if token_secret is None:
        token_secret = _setting(
            conn, TOKEN_SECRET_SETTING, secrets.token_urlsafe(TOKEN_SECRET_BYTES)
        )
    return Credentials(
        password=password, token_secret=token_secret.encode(), password_source=source
    )
