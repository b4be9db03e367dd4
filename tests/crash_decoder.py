"""A test-only decoder for `IsolatedDecoder`, in a module of its own so the decoding children
that import it stay light (tests/helpers imports torch)."""

from __future__ import annotations

import os
from pathlib import Path

from model.isolation import DecodeJob, Ready, ready_job


def aborting_decode(job: DecodeJob) -> Ready:
    """A file whose name holds "crash" kills its process the way a segfault or an abort in a
    C decoder would; every other file decodes as usual."""
    if "crash" in Path(job.path).name:
        os.abort()
    return ready_job(job)
