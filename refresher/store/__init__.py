"""The store seam: one `Database` over SQLAlchemy Core, with a backend each for SQLite (one
process, the default) and PostgreSQL (any number of processes).

Queries live with their concepts (`refresher.jobs`, `refresher.storage`) and are written
once, for both backends; what differs lives in `refresher.store.sqlite` and
`refresher.store.postgres`.
"""

from refresher.store.database import Database, Writer, write_if_room, write_when_room

__all__ = ["Database", "Writer", "write_if_room", "write_when_room"]
