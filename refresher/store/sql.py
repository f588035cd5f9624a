"""The few pieces of SQL that differ between the backends, for queries written once.

Each backend's module states and registers its own (`refresher.store.sqlite.DIALECT`,
`refresher.store.postgres.DIALECT`); a query asks for the one of the connection it runs
on: `f"SELECT ... {dialect(conn).for_update}"`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BindParameter, Connection, bindparam


@dataclass(frozen=True)
class Dialect:
    # Appended to a SELECT that rows of others' transactions must wait for ("" where a
    # write transaction holds the whole database, as SQLite's does).
    for_update: str
    # Appended to a SELECT that takes rows no other transaction holds, passing over the
    # rest (a queue's claim).
    skip_locked: str
    # The database's clock, in unix seconds: one clock for every process that shares it.
    now_s: str


# By SQLAlchemy's name of the database: filled as each backend's module is imported,
# which it is before it can make a connection.
_DIALECTS: dict[str, Dialect] = {}


def register(name: str, of: Dialect) -> Dialect:
    """Make `of` the dialect of connections to the database SQLAlchemy calls `name`."""
    _DIALECTS[name] = of
    return of


def dialect(conn: Connection) -> Dialect:
    """The dialect of the backend `conn` belongs to."""
    return _DIALECTS[conn.dialect.name]


def in_list(name: str) -> BindParameter[object]:
    """A parameter `:name` that takes a list, for `WHERE x IN :name`."""
    return bindparam(name, expanding=True)
