"""What a worker's tasks say of each delivery: the text Flower shows of a batch."""

from __future__ import annotations

from broker.worker.outcomes import (
    DETAIL_QUOTED,
    Outcome,
    by_status,
    failure_summary,
)


def test_a_batch_names_each_job_under_how_it_ended_in_order():
    outcomes = [
        Outcome("a", "COMPLETED"),
        Outcome("b", "cancelled"),
        Outcome("c", "COMPLETED"),
        Outcome("d", "refused:altered"),
        Outcome("e", "unstarted"),
    ]
    assert by_status(outcomes) == {
        "COMPLETED": ["a", "c"],
        "cancelled": ["b"],
        "refused:altered": ["d"],
        "unstarted": ["e"],
    }
    assert failure_summary(outcomes) is None


def test_a_batch_with_a_job_that_ended_error_says_which_and_why():
    outcomes = [
        Outcome("a", "COMPLETED"),
        Outcome("b", "ERROR", "ValueError: boom"),
        Outcome("c", "ERROR", None),
    ]
    assert failure_summary(outcomes) == (
        "2 of 3 jobs ended ERROR: {'COMPLETED': ['a'], 'ERROR': ['b', 'c']}; "
        "b: ValueError: boom; c: no detail"
    )


def test_a_long_detail_is_cut_short_in_the_summary_only():
    long = "x" * (DETAIL_QUOTED * 2)
    outcome = Outcome("a", "ERROR", long)
    summary = failure_summary([outcome])
    assert summary is not None
    assert summary.endswith("a: " + "x" * (DETAIL_QUOTED - 3) + "...")
    assert outcome.detail == long
