"""Decoding in child processes, so that a decoder which crashes the interpreter (a segfault or
an abort in a C library fed a hostile file) costs that one file, not the worker.

The children read and verify each file themselves and send back only its resized grey image,
so the parent never holds a batch's file bytes or decoded pixels (a 3,000 px 12-bit DICOM file
is 14 MB; its grey image at 352 px, 0.5 MB; the parent makes the three normalised channels).
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
    children from about 41 to 29 ms per batch of 16 small JPEGs (docs/PERFORMANCE.md)."""

    grey: np.ndarray  # (1, size, size) float32 in [0, 1]
    decoded: Decoded
    pixels_shape: tuple[int, int]


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
    return Ready(grey, replace(decoded, pixels=RELEASED), (height, width))


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
