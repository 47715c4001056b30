"""The contract of a collection of jobs."""

from __future__ import annotations

import abc
import uuid
from collections.abc import AsyncIterator, Iterator

from broker.models.interfaces.job import Job


class JobList(abc.ABC):
    """A set of jobs, keyed by id, that behaves like a container."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[Job]:
        """Iterate asynchronously over every job in the set."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Job]:
        """Iterate over every job in the set."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """How many jobs the set holds."""

    @abc.abstractmethod
    def __contains__(self, job_id: object) -> bool:
        """Whether a job, given as a ``Job`` or as its UUID, is in the set."""

    @abc.abstractmethod
    def __getitem__(self, job_id: uuid.UUID) -> Job:
        """The job with this id; ``KeyError`` when there is none."""

    @abc.abstractmethod
    def __setitem__(self, job_id: uuid.UUID, job: Job) -> None:
        """Make the job with this id take ``job``'s state; ``KeyError`` when there is none."""

    @abc.abstractmethod
    def __delitem__(self, job_id: uuid.UUID) -> None:
        """Remove the job with this id; ``KeyError`` when there is none."""

    @abc.abstractmethod
    def __eq__(self, other: object) -> bool:
        """Two lists are equal when they hold the same jobs."""
