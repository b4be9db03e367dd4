"""The worker's watchdog: when its main thread counts as stalled (a clock is injected; nothing
sleeps)."""

from __future__ import annotations

import pytest

from worker.liveness import OVERRUN_GRACE_S, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def up() -> bool:
    return True


def down() -> bool:
    return False


def test_a_loop_that_turns_is_never_stalled(clock: Clock) -> None:
    progress = Progress(clock)
    for _ in range(100):
        clock.now += 2.0
        progress.tick()
        assert progress.stalled(15.0, up) is None


def test_a_quiet_loop_is_stalled_once_the_broker_has_answered_for_as_long_again(
    clock: Clock,
) -> None:
    progress = Progress(clock)
    clock.now += 15.0
    assert progress.stalled(15.0, up) is None  # quiet, but not yet for longer than 15 s
    clock.now += 1.0
    assert progress.stalled(15.0, up) is None  # the broker answers: from now on it counts
    clock.now += 15.0
    assert progress.stalled(15.0, up) is None
    clock.now += 0.5
    reason = progress.stalled(15.0, up)
    assert reason == "its main loop has made no progress for 32 s while the broker answers"


def test_a_quiet_loop_while_the_broker_is_down_is_waiting_to_reconnect(clock: Clock) -> None:
    progress = Progress(clock)
    for _ in range(60):  # ten minutes without a broker
        clock.now += 10.0
        assert progress.stalled(15.0, down) is None
    # Back: the worker has as long again to reconnect before it counts as stuck.
    assert progress.stalled(15.0, up) is None
    clock.now += 10.0
    assert progress.stalled(15.0, up) is None
    progress.tick()  # it reconnected
    clock.now += 10.0
    assert progress.stalled(15.0, up) is None


def test_work_counts_as_progress_until_it_overruns_its_limit_by_the_grace(clock: Clock) -> None:
    progress = Progress(clock)
    with progress.working(300.0):
        clock.now += 300.0 + OVERRUN_GRACE_S
        assert progress.stalled(15.0, up) is None
        clock.now += 0.1
        assert progress.stalled(15.0, up) == (
            f"a batch has run {OVERRUN_GRACE_S:.0f} s past its time limit"
        )
    # Finished (even late): the loop counts as having just turned.
    assert progress.stalled(15.0, up) is None
    clock.now += 15.0
    assert progress.stalled(15.0, up) is None


def test_work_that_raises_still_ends_the_working_state(clock: Clock) -> None:
    progress = Progress(clock)
    with pytest.raises(RuntimeError), progress.working(1.0):
        raise RuntimeError("batch failed")
    assert progress.working_until is None
