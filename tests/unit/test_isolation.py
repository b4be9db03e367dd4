"""Decoding in child processes: a decoder that kills its process costs that one file."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from model.errors import DecodeError
from model.isolation import (
    CRASHED,
    RELEASED,
    DecodeJob,
    IsolatedDecoder,
    Ready,
    SharedGreys,
    Slot,
    ready_job,
)
from model.preprocess import Preset, normalise_array, normalise_batch
from tests.crash_decoder import aborting_decode
from tests.helpers import REPO, sample_images, wait_for


def _job(path: Path, *, sha256: str | None = None, max_bytes: int | None = None) -> DecodeJob:
    return DecodeJob(str(path), sha256, Preset(size=224), 80_000_000, max_bytes)


@pytest.fixture
def decoder() -> Iterator[IsolatedDecoder[Ready]]:
    decoder = IsolatedDecoder(2, decode_fn=aborting_decode)
    yield decoder
    decoder.close()


def test_a_crashing_file_fails_alone_and_the_rest_of_the_batch_decodes(
    tmp_path: Path, decoder: IsolatedDecoder
) -> None:
    samples = sample_images()[:4]
    crash = tmp_path / "crash.jpg"
    crash.write_bytes(samples[0].read_bytes())
    jobs = [_job(samples[0]), _job(crash), *(_job(p) for p in samples[1:])]

    results = decoder.decode_many(jobs)

    assert len(results) == len(jobs)
    assert isinstance(results[1], DecodeError) and str(results[1]) == CRASHED
    assert all(isinstance(r, Ready) for i, r in enumerate(results) if i != 1)
    assert decoder.restarts >= 2  # the batch's pool, then the lone retry's pool
    # the pool works again afterwards, in this same process
    again = decoder.decode_many([_job(samples[0])])
    assert isinstance(again[0], Ready)


def test_children_verify_the_registered_bytes_and_the_size_cap(
    tmp_path: Path, decoder: IsolatedDecoder
) -> None:
    sample = sample_images()[0]
    right = hashlib.sha256(sample.read_bytes()).hexdigest()
    results = decoder.decode_many(
        [
            _job(sample, sha256=right),
            _job(sample, sha256="0" * 64),
            _job(sample, max_bytes=100),
            _job(tmp_path / "gone.jpg"),
        ]
    )
    assert isinstance(results[0], Ready)
    assert "contents changed" in str(results[1])
    assert "file too large" in str(results[2]) and "FRACTURE_MAX_FILE_MB" in str(results[2])
    assert "file not found" in str(results[3])


def test_only_the_grey_image_comes_back_and_makes_the_same_input_as_decoding_here(
    decoder: IsolatedDecoder[Ready],
) -> None:
    from model.decode import decode

    sample = sample_images()[1]
    [isolated] = decoder.decode_many([_job(sample)])
    local = decode(sample, target_size=224)
    assert isinstance(isolated, Ready)
    assert isolated.decoded.pixels is not local.pixels and isolated.decoded.pixels.size == 0
    assert isolated.decoded.pixels.shape == RELEASED.shape  # the worker keeps no image
    assert isolated.pixels_shape == local.pixels.shape
    preset = Preset(size=224)
    assert isolated.grey.shape == (1, 224, 224)  # a third of the input's bytes travel
    assert (normalise_array(preset, isolated.grey) == preset(local.pixels).numpy()).all()
    assert (isolated.decoded.width, isolated.decoded.height, isolated.decoded.format) == (
        local.width,
        local.height,
        local.format,
    )
    assert ready_job(_job(sample)).pixels_shape == isolated.pixels_shape


OWNER = """
import os, psutil
from model.isolation import IsolatedDecoder, ready_job
if __name__ == "__main__":
    decoder = IsolatedDecoder(2, decode_fn=ready_job)
    decoder.warm_up()
    print(*(c.pid for c in psutil.Process().children(recursive=True)), flush=True)
    os.kill(os.getpid(), 9)
"""


def test_decoding_children_leave_when_their_worker_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert owner.stdout is not None
    children = [int(pid) for pid in owner.stdout.readline().split()]
    owner.wait(timeout=60)
    assert len(children) >= 3  # the fork server and two decoders (and a resource tracker)
    assert wait_for(lambda: not any(psutil.pid_exists(pid) for pid in children), timeout=15), [
        pid for pid in children if psutil.pid_exists(pid)
    ]


CRASH_THEN_EXIT = """
import sys
from pathlib import Path
from model.isolation import DecodeJob, IsolatedDecoder
from model.preprocess import Preset, normalise_array
from tests.crash_decoder import aborting_decode
if __name__ == "__main__":
    good, crash = sys.argv[1:3]
    decoder = IsolatedDecoder(2, decode_fn=aborting_decode)
    jobs = [DecodeJob(p, None, Preset(size=224), 80_000_000) for p in (good, crash)]
    print([type(r).__name__ for r in decoder.decode_many(jobs)], flush=True)
    # no close(): leaving must not wait for ever on a pool a crash broke
"""


def test_a_process_whose_decoder_crashed_still_exits(tmp_path: Path) -> None:
    script = tmp_path / "crash_then_exit.py"
    script.write_text(CRASH_THEN_EXIT)
    good = sample_images()[0]
    crash = tmp_path / "crash.jpg"
    crash.write_bytes(good.read_bytes())
    completed = subprocess.run(
        [sys.executable, str(script), str(good), str(crash)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # the script imports tests.crash_decoder
        timeout=90,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "['Ready', 'DecodeError']"


def test_children_write_grey_images_to_shared_rows_even_around_a_crash(
    tmp_path: Path, decoder: IsolatedDecoder[Ready]
) -> None:
    samples = sample_images()[:3]
    crash = tmp_path / "crash.jpg"
    crash.write_bytes(samples[0].read_bytes())
    paths = [samples[0], crash, *samples[1:]]
    shared = SharedGreys(224)
    try:
        slots = shared.slots(len(paths))
        jobs = [replace(_job(p), slot=slot) for p, slot in zip(paths, slots, strict=True)]

        results = decoder.decode_many(jobs)

        assert isinstance(results[1], DecodeError) and str(results[1]) == CRASHED
        for index in (0, 2, 3):
            ready = results[index]
            assert isinstance(ready, Ready) and ready.slot == index
            assert ready.grey.size == 0  # nothing but the slot's number came back
            sent = ready_job(_job(paths[index]))
            assert (shared.row(index) == sent.grey).all()
        # a larger call gets a new file, which the children map in its turn
        more = [replace(_job(samples[2]), slot=slot) for slot in shared.slots(6)]
        assert shared.generation == 2 and shared.capacity == 6
        again = decoder.decode_many(more)
        assert all(isinstance(r, Ready) and r.slot == i for i, r in enumerate(again))
        assert all((shared.row(i) == ready_job(_job(samples[2])).grey).all() for i in range(6))
    finally:
        shared.close()


def test_a_slot_that_cannot_be_mapped_sends_the_grey_image_back(tmp_path: Path) -> None:
    sample = sample_images()[0]
    job = replace(_job(sample), slot=Slot(str(tmp_path / "gone"), 1, 0, 224))
    ready = ready_job(job)
    assert ready.slot is None
    assert (ready.grey == ready_job(_job(sample)).grey).all()


def test_the_classifier_decodes_in_children_to_the_rows_of_one_batch(
    tmp_path: Path, tiny_model: Path
) -> None:
    import torch

    from model.inference import Classifier, batched
    from model.isolation import StoredFile

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a JPEG")
    samples = sample_images()
    isolated = Classifier.load(tiny_model, device="cpu", isolation="process")
    threads = Classifier.load(tiny_model, device="cpu", isolation="thread")
    try:
        for paths in ([*samples[:2], broken, *samples[2:]], samples[:2], samples * 3):
            files = [StoredFile(p) for p in paths]
            got, expected = isolated.prepare_files(files), threads.prepare_files(files)
            assert [type(p).__name__ for p in got] == [type(p).__name__ for p in expected]
            good = [p.tensor for p in got if not isinstance(p, DecodeError)]
            assert all(
                torch.equal(p.tensor, q.tensor)
                for p, q in zip(got, expected, strict=True)
                if not isinstance(p, DecodeError) and not isinstance(q, DecodeError)
            )
            batch = batched(good)  # the batch itself: no copy
            assert batch.shape[0] == len(good) and batch.data_ptr() == good[0].data_ptr()
            results, _ = isolated.predict_prepared(
                [p for p in got if not isinstance(p, DecodeError)]
            )
            reference, _ = threads.predict_prepared(
                [q for q in expected if not isinstance(q, DecodeError)]
            )
            assert [r.probability for r in results] == [r.probability for r in reference]
        assert isolated._greys is not None and isolated._greys.capacity == len(samples) * 3
    finally:
        isolated.close()
        threads.close()


def test_inputs_that_are_not_one_batch_s_rows_are_stacked() -> None:
    import numpy as np
    import torch

    from model.inference import batched

    preset = Preset(size=8)
    greys = [np.random.default_rng(i).random((1, 8, 8), dtype=np.float32) for i in range(4)]
    rows = list(torch.from_numpy(normalise_batch(preset, greys)))
    assert all(
        (r.numpy() == normalise_array(preset, g)).all() for r, g in zip(rows, greys, strict=True)
    )
    assert batched(rows[1:3]).data_ptr() == rows[1].data_ptr()
    skipping = batched([rows[0], rows[2]])  # not consecutive: a copy
    assert skipping.data_ptr() != rows[0].data_ptr()
    assert torch.equal(skipping, torch.stack([rows[0], rows[2]]))
    separate = [torch.from_numpy(normalise_array(preset, g)) for g in greys]
    assert torch.equal(batched(separate), torch.stack(rows))
