from __future__ import annotations

from pathlib import Path

from refresher.db import connect, migrate
from refresher.storage import reconcile


def test_forgetting_outputs_of_a_job_deleted_meanwhile_changes_nothing(tmp_path: Path) -> None:
    # A DELETE may remove the row while a janitor pass compares the disk with the store.
    conn = connect(tmp_path / "db.sqlite3")
    migrate(conn)
    assert reconcile.forget_outputs(conn, {"gone": ["an-output"]}) == 0
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
