"""The one way the pipeline reads a stored file: regular files only (a FIFO blocks its reader,
a device never ends), within a size cap, and only if they still hold the registered bytes.
Standard library only on purpose: the watcher imports it without the model."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from model.errors import DecodeError


def special_kind(mode: int) -> str | None:
    """What a non-regular file is, from its `st_mode`; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return kind
    return "special file"


def read_file(
    path: Path | str, *, sha256: str | None = None, max_bytes: int | None = None
) -> bytes:
    """The file's bytes; with `sha256`, only if they are still the bytes that were registered.
    Raises DecodeError with the reason a user is shown."""
    try:
        info = os.stat(path)
        kind = special_kind(info.st_mode)
        if kind is not None:  # opening a FIFO would block the reader
            raise DecodeError(f"not a regular file ({kind}): not read")
        if max_bytes is not None and info.st_size > max_bytes:
            raise DecodeError(
                f"file too large ({info.st_size / 2**20:.0f} MB; the limit is "
                f"{max_bytes / 2**20:.0f} MB, FRACTURE_MAX_FILE_MB): not read"
            )
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise DecodeError("file not found (deleted or moved before it could be read)") from exc
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DecodeError("file was replaced after it was registered (contents changed)")
    return data
