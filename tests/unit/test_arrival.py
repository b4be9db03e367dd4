import time
from pathlib import Path

import pytest

from watcher.watch import ArrivalTracker, is_ignored, sha256_file


def _touched(
    tmp_path: Path, name: str, data: bytes, *, settle_s: float, closed: bool = False
) -> tuple[ArrivalTracker, Path]:
    """A tracker that has seen one event for a file just written with `data`."""
    tracker = ArrivalTracker(settle_s=settle_s)
    path = tmp_path / name
    path.write_bytes(data)
    tracker.touch(path, closed=closed)
    return tracker, path


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        (".hidden.jpg", True),
        ("scan.jpg.part", True),
        ("scan.tmp", True),
        ("scan.jpg~", True),
        ("sub/.staging/scan.jpg", True),
        ("scan.jpg", False),
        ("ward 3/scan (1).dcm", False),
        ("IM0001", False),
    ],
)
def test_hidden_and_temporary_names_are_ignored(name: str, ignored: bool) -> None:
    assert is_ignored(Path(name)) is ignored


def test_a_file_still_being_written_is_not_ready(tmp_path: Path) -> None:
    tracker, path = _touched(tmp_path, "growing.jpg", b"a", settle_s=0.4)
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        with path.open("ab") as handle:  # keeps growing faster than the settle time
            handle.write(b"b" * 100)
        assert tracker.ready() == []
        time.sleep(0.1)
    time.sleep(0.5)  # writing stopped: quiet for longer than the settle time
    assert tracker.ready() == [path]
    assert len(tracker) == 0


def test_close_event_shortens_the_wait(tmp_path: Path) -> None:
    tracker, path = _touched(tmp_path, "copied.jpg", b"complete", settle_s=30, closed=True)
    tracker.ready()
    time.sleep(0.35)
    assert tracker.ready() == [path]


def test_vanished_file_is_forgotten(tmp_path: Path) -> None:
    tracker, path = _touched(tmp_path, "gone.jpg", b"x", settle_s=0.1)
    path.unlink()
    assert tracker.ready() == []
    assert len(tracker) == 0


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = bytes(range(256)) * 5000
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == (hashlib.sha256(data).hexdigest(), len(data))


def test_quiet_period_counts_from_the_event(tmp_path: Path) -> None:
    # A file moved in whole is looked at once the settle time has passed since its event, not
    # a settle time after the watcher first noticed it.
    tracker, path = _touched(tmp_path, "moved-in.jpg", b"complete", settle_s=0.3)
    time.sleep(0.35)
    assert tracker.ready() == [path]


def test_a_change_after_the_event_restarts_the_wait(tmp_path: Path) -> None:
    tracker, path = _touched(tmp_path, "appended.jpg", b"part", settle_s=0.3)
    time.sleep(0.35)
    with path.open("ab") as handle:  # grew without an event reaching the tracker
        handle.write(b" more")
    assert tracker.ready() == []
    time.sleep(0.35)
    assert tracker.ready() == [path]
