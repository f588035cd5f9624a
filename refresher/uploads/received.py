"""Where a resumable upload's bytes go as they arrive, and how a job takes them.

On the local volume an upload is one file, `resumable/<id>`, written at each PATCH's
offset and synced before its offset is recorded. In a bucket it is pieces,
`resumable/<id>/<start>-<writer>`, each spooled to the data directory (scratch) and kept
as it fills: any process may receive the next PATCH, so nothing an upload needs stays on
one machine's disk between PATCHes. A job takes the bytes as a file in its upload folder
(`assemble`): renamed on the volume, joined from its pieces in a bucket.

Everything here blocks (run it in a thread), except `drop_uploads`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import trio

from refresher.storage.blobs import BlobStore, StorageUnavailable
from refresher.storage.full import files_written
from refresher.storage.paths import Paths
from refresher.store import Database
from refresher.uploads import records
from refresher.uploads.records import Piece, UploadRecord

LOGGER = logging.getLogger(__name__)


class Receiver:
    """One PATCH's bytes from `start`: `write` them, `keep` what was written so far (the
    piece to record, in a bucket), `close` at the end, kept or not."""

    def __init__(self, blobs: BlobStore, paths: Paths, upload_id: str, start: int, writer: str):
        self.blobs = blobs
        self.paths = paths
        self.upload_id = upload_id
        # Where the bytes not yet kept begin, and how many there are.
        self.start = start
        self.unkept = 0
        self._writer = writer
        self._spool: Path | None = None
        if blobs.remote:
            self._file = None
        else:
            # Only the first bytes make the file: one missing later was removed (the
            # upload expired meanwhile), and writing on would leave a hole of zeros.
            create = os.O_CREAT if start == 0 else 0
            fd = os.open(paths.resumable_upload(upload_id), os.O_WRONLY | create, 0o600)
            self._file = os.fdopen(fd, "wb")
            self._file.seek(start)

    def _piece_path(self) -> Path:
        return self.paths.resumable_upload(self.upload_id) / f"{self.start:015d}-{self._writer}"

    def write(self, chunks: list[bytes]) -> None:
        """Write `chunks` in order after what was written before (`StorageFull` when the
        volume is)."""
        with files_written("an upload's bytes"):
            self._write(chunks)

    def _write(self, chunks: list[bytes]) -> None:
        if self._file is None:
            self._spool = self._piece_path()
            self._spool.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._spool, "wb")  # noqa: SIM115 - closed in keep/close
        for chunk in chunks:
            self._file.write(chunk)
            self.unkept += len(chunk)

    def keep(self) -> tuple[int, Piece | None]:
        """Make the bytes written since the last keep durable; return how many and, in a
        bucket, the piece holding them. The caller records them (`records.advance`)."""
        with files_written("an upload's bytes"):
            return self._keep()

    def _keep(self) -> tuple[int, Piece | None]:
        kept, piece = self.unkept, None
        if kept and self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            if self.blobs.remote:
                self._file.close()
                self._file = None
                assert self._spool is not None
                self.blobs.keep(self._spool)
                piece = Piece(self.start, kept, self.paths.relative(self._spool))
                self._spool = None
        self.start += kept
        self.unkept = 0
        return kept, piece

    def forget_piece(self, piece: Piece) -> None:
        """Remove a kept piece whose recording was refused (another writer took over)."""
        self.blobs.remove(self.paths.absolute(piece.name))

    def close(self) -> None:
        """Close what is open; a spooled piece not kept goes."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._spool is not None:
            self._spool.unlink(missing_ok=True)
            self._spool = None


def assemble(blobs: BlobStore, paths: Paths, upload: UploadRecord, dest: Path) -> None:
    """Put the finished upload's bytes at `dest` (a local file the job then keeps)."""
    source = paths.resumable_upload(upload.id)
    if not blobs.remote:
        os.rename(source, dest)
        with open(dest, "rb+") as file:  # a writer that lost its hold may have run past
            file.truncate(upload.length)
        return
    with open(dest, "wb") as out:
        for piece in upload.pieces:
            path = paths.absolute(piece.name)
            blobs.fetch(path)
            try:
                with open(path, "rb") as part:
                    while block := part.read(1024 * 1024):
                        out.write(block)
            finally:
                path.unlink(missing_ok=True)
    if dest.stat().st_size != upload.length:
        raise OSError(f"upload {upload.id} holds {dest.stat().st_size} of {upload.length} bytes")


def put_back(blobs: BlobStore, paths: Paths, upload: UploadRecord, dest: Path) -> None:
    """Undo `assemble` for an upload a job gives back: on the volume the file returns;
    in a bucket the pieces never left, and the joined copy goes."""
    if blobs.remote:
        dest.unlink(missing_ok=True)
    elif dest.exists():
        os.rename(dest, paths.resumable_upload(upload.id))


def remove_upload(blobs: BlobStore, paths: Paths, upload_id: str) -> None:
    """Delete the upload's bytes wherever they are (a file, or a folder of pieces and any
    local copies of them)."""
    blobs.remove(paths.resumable_upload(upload_id))


async def drop_uploads(
    db: Database, blobs: BlobStore, paths: Paths, upload_ids: Sequence[str]
) -> bool:
    """Remove uploads' bytes, then their rows; return False when the storage cannot be
    reached (what is left is the janitor's once it expires)."""
    try:
        for upload_id in upload_ids:
            await trio.to_thread.run_sync(remove_upload, blobs, paths, upload_id)
    except StorageUnavailable as err:
        LOGGER.error("uploads %s not removed yet: %s", list(upload_ids), err)
        return False
    await db.write(lambda conn: records.forget(conn, upload_ids))
    return True
