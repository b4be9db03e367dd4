"""Decoding in child processes: a decoder that kills its process costs that one file."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from model.errors import DecodeError
from model.isolation import CRASHED, RELEASED, DecodeJob, IsolatedDecoder, Ready, ready_job
from model.preprocess import Preset, normalise_array
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
