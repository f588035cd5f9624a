from __future__ import annotations

import stat
from pathlib import Path

import trio

from refresher.auth import credentials
from refresher.auth.credentials import Credentials
from refresher.storage.paths import Paths
from refresher.store import Database


def test_generated_password_and_secret_are_private_and_kept(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    first = credentials.load(paths, password=None, token_secret=None)
    assert len(first.password) >= 12
    assert len(first.token_secret) >= 32
    assert first.password_source == str(paths.password_file)
    for path in (paths.password_file, paths.token_secret_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = credentials.load(paths, password=None, token_secret=None)
    assert again == first


def test_environment_values_win_and_write_no_password_file(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    loaded = credentials.load(paths, password="from-env-123", token_secret="secret-from-env")
    assert loaded.password == "from-env-123"
    assert loaded.token_secret == b"secret-from-env"
    assert loaded.password_source == "environment"
    assert not paths.password_file.exists()
    assert not paths.token_secret_file.exists()


def test_password_comparison() -> None:
    creds = credentials.Credentials("hunter22", b"x", "environment")
    assert creds.password_matches("hunter22")
    assert not creds.password_matches("hunter2")
    assert not creds.password_matches("hunter222")
    assert not creds.password_matches("")


async def test_shared_credentials_are_made_once_for_every_process(
    store_location: Path | str,
) -> None:
    stores = [await Database.open(store_location) for _ in range(3)]
    made: list[Credentials] = []

    async def start(db: Database) -> None:
        made.append(
            await db.write(
                lambda conn: credentials.load_shared(conn, password=None, token_secret=None)
            )
        )

    async with trio.open_nursery() as nursery:
        for db in stores:
            nursery.start_soon(start, db)
    # Every process reads the same password and signs with the same key.
    assert len({(each.password, each.signing_key) for each in made}) == 1
    assert made[0].password_source == "the database's settings table"
    # The environment wins, and keeps its values out of the store.
    given = await stores[0].write(
        lambda conn: credentials.load_shared(
            conn, password="chosen-password", token_secret="chosen-secret-value"
        )
    )
    assert (given.password, given.password_source) == ("chosen-password", "environment")
    assert given.token_secret == b"chosen-secret-value"
    for db in stores:
        await db.aclose()
