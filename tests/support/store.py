"""Plain SQL in tests, on either backend: `sql(conn, "... WHERE id = :id", id=job_id)`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, CursorResult, text


def sql(conn: Connection, statement: str, **params: Any) -> CursorResult[Any]:
    """Run `statement` with named parameters (`:name`) on `conn`."""
    return conn.execute(text(statement), params)
