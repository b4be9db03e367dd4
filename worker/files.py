"""What the pipeline may open: regular files only (a FIFO blocks its reader, a device never
ends). Light on purpose: the watcher imports it without the model."""

from __future__ import annotations

import stat


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
