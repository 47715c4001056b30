"""The backoff of a dead part of ``topchef up``, and how its end is told (no process here)."""

from __future__ import annotations

import signal

from hypothesis import given
from hypothesis import strategies as st

from broker.ops.restarts import Backoff, ending


def test_the_delay_doubles_from_a_second_to_a_minute():
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


@given(st.integers(min_value=-(10**6), max_value=10**9))
def test_any_count_of_deaths_gets_a_delay_within_the_bounds(deaths):
    assert 1.0 <= Backoff().delay(deaths) <= 60.0


def test_a_part_that_stayed_up_a_while_starts_again_after_the_first_delay():
    backoff = Backoff(steady=60.0)
    deaths = 0
    for _ in range(5):  # each dies within a second of its start
        deaths = backoff.deaths_in_row(deaths, uptime=0.5)
    assert backoff.delay(deaths) == 16
    deaths = backoff.deaths_in_row(deaths, uptime=60.0)
    assert (deaths, backoff.delay(deaths)) == (1, 1)


def test_an_end_is_told_by_its_code_or_its_signal_name():
    assert ending(0) == "exited with code 0"
    assert ending(3) == "exited with code 3"
    assert ending(-signal.SIGKILL) == "was killed by SIGKILL"
    assert ending(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert ending(-200) == "was killed by signal 200"
