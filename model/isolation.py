"""Decoding in child processes, so that a decoder which crashes the interpreter (a segfault or
an abort in a C library fed a hostile file) costs that one file, not the worker.

The children read and verify each file themselves and hand back only its resized grey image,
written to memory shared with the parent (`SharedGreys`), so the parent never holds a batch's
file bytes or decoded pixels (a 3,000 px 12-bit DICOM file is 14 MB; its grey image at 352 px,
0.5 MB; the parent makes the three normalised channels of the batch from those rows).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

import numpy as np

from model.decode import Decoded, decode
from model.errors import DecodeError
from model.files import read_file
from model.preprocess import Preset, resize_array

log = logging.getLogger(__name__)

CRASHED = "the decoder crashed on this file (its process died); it was not retried"
# What `Decoded.pixels` holds once the network input is made: the worker keeps no image.
RELEASED = np.empty((0, 0), dtype=np.float32)


class Slot(NamedTuple):
    """Where a decoding child writes one grey image instead of sending it back: row `row` of
    the parent's `SharedGreys` file at `path`, generation `generation` (a path can name a later
    file once the parent has replaced one), rows of (1, `side`, `side`) float32."""

    path: str
    generation: int
    row: int
    side: int


@dataclass(frozen=True)
class DecodeJob:
    """One stored file to decode: its path, the sha256 it was registered with, the preset whose
    network input to make (its size is the decoding target), the limits."""

    path: str
    sha256: str | None
    preset: Preset
    max_pixels: int
    max_bytes: int | None = None
    patient_salt: str | None = None
    signature: str | None = None  # `files.settled_signature` when it was hashed: see `read_file`
    slot: Slot | None = None  # where to write the grey image (None: send it back)


class StoredFile(NamedTuple):
    """A stored file to score: where it is, the sha256 it was registered with (None: not
    checked) and the signature it had when it was hashed (None: hash it again)."""

    path: Path | str
    sha256: str | None = None
    signature: str | None = None


@dataclass
class Ready:
    """A file made ready for the network: its resized grey image (`preprocess.normalise_array`
    makes the network input of it), and what decoding learnt about it (the decoded pixels
    released, their shape kept for mapping boxes back).

    The grey image is a third of the network input's bytes, which are identical channels once
    normalised: sending it rather than the input cut the round trip through the decoding
    children from about 41 to 29 ms per batch of 16 small JPEGs; writing it to a shared row
    (`slot`) instead of sending it saves most of the rest (docs/PERFORMANCE.md)."""

    grey: np.ndarray  # (1, size, size) float32 in [0, 1]; empty when written to `slot`
    decoded: Decoded
    pixels_shape: tuple[int, int]
    slot: int | None = None  # the `SharedGreys` row holding the grey image


def decode_job(job: DecodeJob) -> Decoded:
    """Read, verify and decode one file; its bytes are dropped on return."""
    data = read_file(job.path, sha256=job.sha256, max_bytes=job.max_bytes, signature=job.signature)
    return decode(
        data, target_size=job.preset.size, max_pixels=job.max_pixels, patient_salt=job.patient_salt
    )


def ready_job(job: DecodeJob) -> Ready:
    """Decode one file and resize it for the network (in a child process, or in a thread): only
    the grey image (0.5 MB at 352 px) travels back, not the decoded pixels (7 MB for a 3,000 px
    radiograph reduced by 2)."""
    decoded = decode_job(job)
    grey = resize_array(job.preset, decoded.pixels)
    height, width = decoded.pixels.shape
    released = replace(decoded, pixels=RELEASED)
    if job.slot is None:
        return Ready(grey, released, (height, width))
    try:
        _shared_rows(job.slot)[job.slot.row] = grey
    except (OSError, ValueError):  # the parent's rows cannot be mapped here: send it back
        return Ready(grey, released, (height, width))
    return Ready(IN_SLOT, released, (height, width), slot=job.slot.row)


IN_SLOT = np.empty((0, 0, 0), dtype=np.float32)  # `Ready.grey` when the image is in its slot
_opened: dict[tuple[str, int], np.ndarray] = {}  # in a child: the parent's rows, once mapped


def _shared_rows(slot: Slot) -> np.ndarray:
    """The parent's shared rows, mapped once per child and file."""
    key = (slot.path, slot.generation)
    rows = _opened.get(key)
    if rows is None:
        _opened.clear()  # the parent has replaced its file: the old one is not written again
        mapped = np.memmap(slot.path, dtype=np.float32, mode="r+")
        rows = _opened[key] = mapped.reshape(-1, 1, slot.side, slot.side)
    return rows


class SharedGreys:
    """Rows of memory shared with the decoding children, one per file of a call, which they
    write each grey image into instead of sending it back through the pool's pipe: 0.5 MB an
    image at 352 px, about 40 ms a batch of 32 on the 2-core VM (docs/PERFORMANCE.md).

    An anonymous file (`memfd_create`) that the children open through /proc: it has no name to
    clean up after a worker that dies, and goes when the last process holding it does. The
    rows are read once the call's jobs are all back, so one call uses them at a time.
    """

    def __init__(self, side: int) -> None:
        self.side = side
        self.generation = 0
        self.capacity = 0
        self._fd: int | None = None
        self._path = ""
        self._rows: np.ndarray | None = None

    @staticmethod
    def available() -> bool:
        return hasattr(os, "memfd_create") and Path(f"/proc/{os.getpid()}/fd").is_dir()

    def slots(self, count: int) -> list[Slot]:
        """A slot for each of `count` files, the file grown to hold them when it is smaller."""
        if count > self.capacity:
            self._replace(count)
        return [Slot(self._path, self.generation, row, self.side) for row in range(count)]

    def row(self, index: int) -> np.ndarray:
        assert self._rows is not None
        return self._rows[index]

    def _replace(self, capacity: int) -> None:
        fd = os.memfd_create("fracture-greys", os.MFD_CLOEXEC)
        os.ftruncate(fd, capacity * self.side * self.side * 4)
        self.close()
        self._fd, self.capacity, self.generation = fd, capacity, self.generation + 1
        self._path = f"/proc/{os.getpid()}/fd/{fd}"  # how the children open it
        mapped = np.memmap(self._path, dtype=np.float32, mode="r+")
        self._rows = mapped.reshape(capacity, 1, self.side, self.side)

    def close(self) -> None:
        self._rows = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self.capacity = None, 0


T = TypeVar("T")


class IsolatedDecoder(Generic[T]):
    """A pool of decoding child processes. When one dies, the files it may have been decoding
    are decoded again one at a time in fresh children; a file that kills a child on its own is
    failed with `CRASHED`, and decoding goes on."""

    def __init__(self, processes: int, *, decode_fn: Callable[[DecodeJob], T]) -> None:
        self.processes = max(1, processes)
        self.decode_fn = decode_fn
        self.restarts = 0
        # forkserver: children are forked from a small, clean server process, never from the
        # worker itself (whose ONNX Runtime and torch threads a fork would copy mid-state);
        # the decoding modules are imported once in the server, so a restart costs milliseconds.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["model.isolation"])
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=self._context,
                initializer=_child_setup,
                initargs=(os.getpid(),),
            )
        return self._pool

    def _restart(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self.restarts += 1

    def decode_many(self, jobs: Sequence[DecodeJob]) -> list[T | DecodeError]:
        """Each job's result or its DecodeError, in order."""
        results: list[T | DecodeError | None] = [None] * len(jobs)
        suspects = self._run(list(enumerate(jobs)), results)
        if suspects:
            log.warning(
                "a decoder process died; decoding %d file(s) one at a time to find the cause",
                len(suspects),
            )
            for index in suspects:
                if self._run([(index, jobs[index])], results):
                    log.error("the decoder crashed on image file %d of this batch", index + 1)
                    results[index] = DecodeError(CRASHED)
        assert all(result is not None for result in results)  # one outcome per input
        return [r for r in results if r is not None]

    def _run(
        self,
        indexed: list[tuple[int, DecodeJob]],
        results: list[T | DecodeError | None],
    ) -> list[int]:
        """Decode `indexed` in the pool into `results`; the indices lost to a dead child."""
        futures: list[tuple[int, Future[T]]] = []
        try:
            pool = self._executor()
            for index, job in indexed:
                futures.append((index, pool.submit(self.decode_fn, job)))
        except BrokenProcessPool:
            pass  # a child died while jobs were being submitted; the rest count as lost below
        lost = [index for index, _ in indexed[len(futures) :]]
        for index, future in futures:
            try:
                results[index] = future.result()
            except DecodeError as exc:
                results[index] = exc
            except BrokenProcessPool:
                lost.append(index)
        if lost:
            self._restart()
        return sorted(lost)

    def warm_up(self) -> None:
        """Start every child now, so the first batch does not wait for them."""
        pool = self._executor()
        for future in [pool.submit(_ready) for _ in range(self.processes)]:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _ready() -> bool:
    return True


def _child_setup(owner: int) -> None:
    """A process group of its own: Ctrl-C and a stop signal sent to the worker's group reach
    the worker, which finishes its running batch and then shuts its children down (while
    `terminate` still works on them, as a broken pool needs). And a child leaves when its
    owner is gone: a SIGKILLed worker cannot shut it down, and it would wait on its job queue
    for ever (each child holds both of that queue's ends)."""
    os.setpgrp()
    threading.Thread(target=_exit_without, args=(owner,), daemon=True).start()


def _exit_without(owner: int, interval_s: float = 1.0) -> None:
    while True:
        time.sleep(interval_s)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # alive, and another user's: cannot happen for our own parent
            pass
