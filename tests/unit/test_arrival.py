"""When the watcher counts a file as complete, on a fake clock: no test sleeps."""

from pathlib import Path

import pytest

from watcher.watch import CLOSED_SETTLE_S, ArrivalTracker, is_ignored, sha256_file


class FakeClock:
    """A monotonic clock that moves only when a test advances it (by exact steps, so a wait of
    exactly the settle time compares equal)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _touched(
    tmp_path: Path, name: str, data: bytes, *, settle_s: float, closed: bool = False
) -> tuple[ArrivalTracker, FakeClock, Path]:
    """A tracker on a fake clock that has seen one event for a file just written with `data`."""
    clock = FakeClock()
    tracker = ArrivalTracker(settle_s=settle_s, clock=clock)
    path = tmp_path / name
    path.write_bytes(data)
    tracker.touch(path, closed=closed)
    return tracker, clock, path


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
    tracker, clock, path = _touched(tmp_path, "growing.jpg", b"a", settle_s=4)
    for _ in range(12):
        with path.open("ab") as handle:  # keeps growing faster than the settle time
            handle.write(b"b" * 100)
        assert tracker.ready() == []
        clock.advance(1)
    assert tracker.ready() == []  # the last write was seen 1 s ago
    clock.advance(3)  # writing stopped: quiet for exactly the settle time
    assert tracker.ready() == [path]
    assert len(tracker) == 0


def test_close_event_shortens_the_wait(tmp_path: Path) -> None:
    tracker, clock, path = _touched(tmp_path, "copied.jpg", b"complete", settle_s=30, closed=True)
    clock.advance(CLOSED_SETTLE_S / 2)
    assert tracker.ready() == []
    clock.advance(CLOSED_SETTLE_S / 2)  # the short quiet period after a close, not 30 s
    assert tracker.ready() == [path]


def test_vanished_file_is_forgotten(tmp_path: Path) -> None:
    tracker, _, path = _touched(tmp_path, "gone.jpg", b"x", settle_s=1)
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
    tracker, clock, path = _touched(tmp_path, "moved-in.jpg", b"complete", settle_s=3)
    clock.advance(3)
    assert tracker.ready() == [path]


def test_a_change_after_the_event_restarts_the_wait(tmp_path: Path) -> None:
    tracker, clock, path = _touched(tmp_path, "appended.jpg", b"part", settle_s=3)
    clock.advance(3)
    with path.open("ab") as handle:  # grew without an event reaching the tracker
        handle.write(b" more")
    assert tracker.ready() == []
    clock.advance(2)
    assert tracker.ready() == []
    clock.advance(1)
    assert tracker.ready() == [path]
