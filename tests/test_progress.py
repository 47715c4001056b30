"""A run's progress reports: throttled, and the last one sent when the run returns."""

from __future__ import annotations

from broker.worker.progress_reports import ThrottledProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reports_closer_than_the_interval_are_held_and_the_last_is_sent_at_the_end():
    sent: list[tuple[float, str | None]] = []
    clock = Clock()
    progress = ThrottledProgress(lambda f, m: sent.append((f, m)), interval=0.25, clock=clock)

    progress(0.1, "point 1/10")  # the first goes at once
    clock.now += 0.1
    progress(0.2, "point 2/10")  # held back
    progress(0.3, "point 3/10")  # held back, in its place
    assert sent == [(0.1, "point 1/10")]
    clock.now += 0.2
    progress(0.4, "point 4/10")  # the interval has passed: it goes, the held one is moot
    clock.now += 0.01
    progress(0.9, "point 9/10")
    assert sent == [(0.1, "point 1/10"), (0.4, "point 4/10")]

    progress.flush()  # the run returned: its last word goes
    progress.flush()  # and only once
    assert sent[-1] == (0.9, "point 9/10")
    assert len(sent) == 3


def test_a_report_of_one_always_goes_and_leaves_nothing_held():
    sent: list[tuple[float, str | None]] = []
    clock = Clock()
    progress = ThrottledProgress(lambda f, m: sent.append((f, m)), interval=0.25, clock=clock)
    progress(0.5, None)
    progress(0.6, "held")
    progress(1.0, "done")
    progress.flush()
    assert sent == [(0.5, None), (1.0, "done")]


def test_the_package_keeps_handing_out_the_progress_function():
    """A module of the worker package named ``progress`` would shadow the function."""
    import broker.worker
    import broker.worker.runtime  # imports every module the worker runs
    from broker.worker import handlers

    assert broker.worker.progress is handlers.progress
