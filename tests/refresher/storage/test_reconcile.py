from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from refresher.storage import reconcile
from refresher.store import Database


async def test_forgetting_outputs_of_a_job_deleted_meanwhile_changes_nothing(
    store_location: Path | str,
) -> None:
    # A DELETE may remove the row while a janitor pass compares the disk with the store.
    db = await Database.open(store_location)
    assert await db.write(lambda conn: reconcile.forget_outputs(conn, {"gone": ["output"]})) == 0
    assert await db.read(lambda conn: conn.execute(text("SELECT count(*) FROM jobs")).scalar()) == 0
    await db.aclose()
