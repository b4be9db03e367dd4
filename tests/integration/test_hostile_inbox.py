"""A hostile inbox, end to end: real watcher, worker and broker processes, a real database.

Every format and every bad case dropped at once must end with each good file `done`, each bad
one `failed` (or flagged) with a readable reason, nothing lost or deleted, and both processes
still running. Then many small files at once, as a bounded load check.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
from PIL import Image

from db.models import Image as ImageRow
from tests.helpers import ProcessPipeline, process_pipeline, slow_copy, wait_for
from tests.make_inputs import HOSTILE_MAX_PIXELS, Expected, hostile_set, replacement_image

MANY_FILES = int(os.environ.get("FRACTURE_TEST_MANY_FILES", "2000"))


def pipeline(
    root: Path, broker_url: str, model: Path, **settings: object
) -> AbstractContextManager[ProcessPipeline]:
    return process_pipeline(root, broker_url, model, **settings)


def test_hostile_folder_dropped_at_once_ends_clean(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    shutil.copy(Path(__file__).parents[1] / "fixtures" / "fractured_IMG0000470.jpg", secret)

    with pipeline(tmp_path, broker_url, tiny_model, max_pixels=HOSTILE_MAX_PIXELS) as p:
        p.start("watch")
        expected = hostile_set(p.inbox)
        (p.inbox / "link to outside.jpg").symlink_to(secret)
        expected["link to outside.jpg"] = Expected("failed", "symbolic link pointing outside")
        (p.inbox / "deleted before decoding.jpg").write_bytes(secret.read_bytes()[:-2] + b"\0\0")
        expected["deleted before decoding.jpg"] = Expected("failed", "deleted or moved")
        (p.inbox / "replaced before decoding.jpg").write_bytes(b"\xff\xd8 placeholder")
        ignored = [p.inbox / ".hidden.jpg", p.inbox / "copying.jpg.part"]
        for path in ignored:
            path.write_bytes(b"never registered")

        # Registered but not yet decoded (no worker yet): now delete one file, replace another.
        assert wait_for(lambda: len(p.rows()) == len(expected) + 1, timeout=60), (
            sorted(r.filename for r in p.rows()),
            p.logs(),
        )
        (p.inbox / "deleted before decoding.jpg").unlink()
        (p.inbox / "replaced before decoding.jpg").write_bytes(replacement_image())

        p.start("worker")
        total = len(expected) + 1  # the replaced file: one row, which took the new bytes
        assert wait_for(lambda: p.settled(total), timeout=120), (p.counts(), p.logs())
        assert p.alive(), p.logs()

        by_name: dict[str, list[ImageRow]] = defaultdict(list)
        for row in p.rows():
            by_name[row.filename].append(row)
        (replaced,) = by_name.pop("replaced before decoding.jpg")
        assert replaced.status == "done", replaced.error
        assert replaced.bytes == len(replacement_image())
        assert set(by_name) == set(expected), set(by_name) ^ set(expected)
        predictions = p.predictions_per_image()
        for name, want in expected.items():
            (row,) = by_name[name]
            assert row.status == want.status, (name, row.status, row.error)
            if want.status == "failed":
                assert want.text and want.text in (row.error or ""), (name, row.error)
                assert row.error.isprintable()  # type: ignore[union-attr]
            else:
                assert predictions.get(row.id) == 1, name
                assert (want.text or "") in (row.warning or ""), (name, row.warning)
                assert bool(row.warning) == bool(want.text), (name, row.warning)

        # nothing deleted or moved by the pipeline; the secret outside was never read
        for name in set(expected) - {"deleted before decoding.jpg"}:  # deleted by this test
            assert (p.inbox / name).exists() or (p.inbox / name).is_symlink(), name
        assert all(path.exists() for path in ignored)
        assert secret.read_bytes().startswith(b"\xff\xd8")
        assert p.alive(), p.logs()


def _tiny_distinct_pngs(directory: Path, count: int) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        noise = rng.integers(0, 256, size=(24, 24), dtype=np.uint8)
        Image.fromarray(noise).save(directory / f"tiny {index:05d}.png", compress_level=1)


def test_many_files_dropped_as_one_folder_are_all_scored(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    staging = tmp_path / "staging" / f"{MANY_FILES} files"
    _tiny_distinct_pngs(staging, MANY_FILES)
    with pipeline(tmp_path, broker_url, tiny_model, batch_size=64, heatmaps="none") as p:
        p.start("worker")
        p.start("watch")
        time.sleep(2)  # both up: the measurement is the drop, not the start-up
        started = time.monotonic()
        staging.rename(p.inbox / staging.name)  # the whole folder arrives in one move
        done = wait_for(
            lambda: p.counts().get("done", 0) == MANY_FILES,
            timeout=60 + MANY_FILES / 20,
            interval=1,
        )
        seconds = time.monotonic() - started
        assert done, (p.counts(), p.logs())
        assert p.counts() == {"done": MANY_FILES}
        assert set(p.predictions_per_image().values()) == {1}
        assert p.alive(), p.logs()
    print(f"\n{MANY_FILES} files dropped at once: all done in {seconds:.1f} s")


def _drop(inbox: Path, names: dict[bytes, Path]) -> None:
    for name, source in names.items():
        with open(os.path.join(os.fsencode(inbox), name), "wb") as handle:
            handle.write(source.read_bytes())


def test_a_file_name_that_is_not_utf8_does_not_block_the_files_dropped_with_it(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    sources = sorted((Path(__file__).parents[1] / "fixtures").glob("*.jpg"))
    with pipeline(tmp_path, broker_url, tiny_model) as p:
        p.start("watch")
        # Latin-1 bytes, as names arrive from old Windows shares and some USB sticks
        _drop(p.inbox, {b"\xe9paule gauche.jpg": sources[0]})
        for source in sources[1:4]:
            shutil.copy(source, p.inbox / source.name)
        # each file gets a row; the odd one is failed with a readable reason
        assert wait_for(lambda: len(p.rows()) == 4, timeout=15), p.logs()
        assert p.alive(), p.logs()
        odd = [row for row in p.rows() if "paule" in row.filename]
        assert len(odd) == 1, [row.filename for row in p.rows()]
        assert odd[0].filename == "\\xe9paule gauche.jpg"
        assert odd[0].status == "failed" and "not valid UTF-8" in (odd[0].error or "")


def test_a_fifo_and_a_socket_in_the_inbox_are_recorded_and_skipped_and_block_nothing(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    """Opening a FIFO blocks until a writer comes: it must never be opened, before or after a
    restart; the files beside it are scored."""
    import socket

    sources = sorted((Path(__file__).parents[1] / "fixtures").glob("*.jpg"))
    with pipeline(tmp_path, broker_url, tiny_model) as p:
        os.mkfifo(p.inbox / "scan.jpg")
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(p.inbox / "scan2.jpg"))
        (p.inbox / "folder.jpg").mkdir()  # a directory with an image's name
        for source in sources[:3]:
            shutil.copy(source, p.inbox / source.name)
        p.start("worker")
        p.start("watch")
        assert wait_for(lambda: p.settled(5), timeout=60), (p.counts(), p.logs())
        rows = {row.filename: row for row in p.rows()}
        assert rows["scan.jpg"].status == "failed"
        assert rows["scan.jpg"].error == "not a regular file (FIFO): skipped, not read"
        assert "(socket)" in (rows["scan2.jpg"].error or "")
        assert p.counts() == {"done": 3, "failed": 2} and p.alive(), p.logs()
        server.close()


def test_fracture_retry_queues_failed_images_again(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    """An image that failed for a reason since fixed (here: marked failed as a crashed decoder
    would leave it) is scored after `fracture retry --reason …`; other reasons are left."""
    import subprocess

    from sqlalchemy import delete, update

    from db.models import Prediction
    from db.session import transaction
    from tests.helpers import fracture_cli

    source = sorted((Path(__file__).parents[1] / "fixtures").glob("*.jpg"))[0]
    with pipeline(tmp_path, broker_url, tiny_model) as p:
        p.start("worker")
        p.start("watch")
        shutil.copy(source, p.inbox / "a.jpg")
        assert wait_for(lambda: p.counts() == {"done": 1}, timeout=60), p.logs()
        with transaction(p.factory) as session:  # as a decoder crash would have left it
            session.execute(delete(Prediction))
            session.execute(
                update(ImageRow).values(status="failed", error="decoder crashed (signal 6)")
            )

        def retry(*args: str) -> str:
            done = subprocess.run(
                fracture_cli("retry", *args), env=p.env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        assert "queued 0 failed ('moved') image(s)" in retry("--reason", "moved")
        assert "would queue 1" in retry("--reason", "DECODER", "--dry-run")
        assert p.counts() == {"failed": 1}
        assert "queued 1 failed ('decoder') image(s)" in retry("--reason", "decoder")
        assert wait_for(lambda: p.counts() == {"done": 1}, timeout=60), p.logs()


def _pausing_writer(source: Path, target: Path, chunks: int, pause: float) -> None:
    """One open handle, pauses between chunks: a stalled network copy."""
    data = source.read_bytes()
    step = len(data) // chunks + 1
    with target.open("wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start : start + step])
            handle.flush()
            time.sleep(pause)


def test_slow_pausing_and_appending_writers_and_a_file_moved_out_and_back_each_end_as_one_done_row(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    import threading

    sources = sorted((Path(__file__).parents[1] / "fixtures").glob("*.jpg"))
    with pipeline(tmp_path, broker_url, tiny_model) as p:
        p.start("worker")
        p.start("watch")
        assert wait_for(lambda: "watching" in p.logs(), timeout=60), p.logs()
        paused = (sources[0], p.inbox / "paused.jpg", 4, 2.0)  # 2 s pauses, file held open
        appended = (sources[1], p.inbox / "appended.jpg", 8, 0.5)  # reopened every 0.5 s
        writers = [
            threading.Thread(target=_pausing_writer, args=paused),
            threading.Thread(target=slow_copy, args=appended),
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        assert wait_for(lambda: p.counts() == {"done": 2}, timeout=90), (p.counts(), p.logs())
        rows = {row.filename: row for row in p.rows()}
        assert set(rows) == {"paused.jpg", "appended.jpg"}, [
            (r.filename, r.error) for r in p.rows()
        ]
        assert p.counts() == {"done": 2}, [(r.filename, r.error) for r in p.rows()]
        for name, source in (("paused.jpg", sources[0]), ("appended.jpg", sources[1])):
            assert rows[name].bytes == source.stat().st_size  # scored complete

        # moved out before a worker could read it, then back: the same row, retried, done
        p.processes["worker"].terminate()
        p.processes["worker"].wait(timeout=60)
        shutil.copy(sources[2], p.inbox / "moved.jpg")
        assert wait_for(lambda: p.counts().get("queued") == 1, timeout=30), p.logs()
        shutil.move(p.inbox / "moved.jpg", tmp_path / "moved.jpg")
        p.start("worker-2")
        assert wait_for(lambda: p.counts().get("failed") == 1, timeout=60), p.logs()
        shutil.move(tmp_path / "moved.jpg", p.inbox / "moved.jpg")
        assert wait_for(lambda: p.counts() == {"done": 3}, timeout=60), (p.counts(), p.logs())
        assert len(p.rows()) == 3
