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


# File times move in steps: a few milliseconds on local Linux file systems, a second or two on
# FAT and some network shares. A write in the same step as the moment a signature was taken
# leaves the times as they were, so a signature is only taken from a file whose last change is
# more than a step old (git's rule for "racily clean" files); stamps in whole seconds are taken
# to come from a coarse file system.
FINE_STEP_NS = 200_000_000
COARSE_STEP_NS = 2_000_000_000


def file_signature(info: os.stat_result) -> str:
    """Size, modification and change times (ns) and inode. Taken as it is only from a file that
    no one else can write (the DICOM receiver's own files, mode 0600 in a 0700 folder); from
    any other file through `settled_signature`."""
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}"


def settled_signature(info: os.stat_result, now_ns: int) -> str | None:
    """Size, modification and change times (ns) and inode, taken before a file is hashed:
    while they stay the same, a later reader can trust that hash (as git and rsync do), since
    any write to the file or another file put in its place changes them. None when the file
    changed too recently for its times to show a write made now (see `FINE_STEP_NS`)."""
    coarse = info.st_mtime_ns % 1_000_000_000 == 0 or info.st_ctime_ns % 1_000_000_000 == 0
    step = COARSE_STEP_NS if coarse else FINE_STEP_NS
    if now_ns - max(info.st_mtime_ns, info.st_ctime_ns) < step:
        return None
    return file_signature(info)


def read_file(
    path: Path | str,
    *,
    sha256: str | None = None,
    max_bytes: int | None = None,
    signature: str | None = None,
) -> bytes:
    """The file's bytes; with `sha256`, only if they are still the bytes that were registered.
    With the `settled_signature` taken when it was hashed, a file that still has it (checked
    after reading, so a write during the read shows too) is not hashed again: for a 15 MB DICOM
    file that is 11 ms of the worker's CPU, as much as decoding it. Any other file is hashed.
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
        with open(path, "rb") as handle:
            data = handle.read()
            unchanged = (
                signature is not None and file_signature(os.fstat(handle.fileno())) == signature
            )
    except FileNotFoundError as exc:
        raise DecodeError("file not found (deleted or moved before it could be read)") from exc
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    if sha256 is not None and not unchanged and hashlib.sha256(data).hexdigest() != sha256:
        raise DecodeError("file was replaced after it was registered (contents changed)")
    return data
