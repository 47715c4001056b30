"""The contract of a job: one unit of work for one service."""

from __future__ import annotations

import abc
import enum
import uuid
from datetime import datetime
from typing import Any

JSON = Any
"""A JSON value: dict, list, str, int, float, bool or None."""


class Job(abc.ABC):
    """A job submitted to a service, and everything known of its progress."""

    class JobStatus(enum.StrEnum):
        """The lifecycle: REGISTERED → WORKING → COMPLETED or ERROR; REGISTERED → CANCELLED."""

        REGISTERED = "REGISTERED"
        WORKING = "WORKING"
        COMPLETED = "COMPLETED"
        ERROR = "ERROR"
        CANCELLED = "CANCELLED"

        def __str__(self) -> str:
            return self.value

    @abc.abstractmethod
    def __hash__(self) -> int:
        """Jobs hash by id, so a job read twice is one element of a set."""

    @abc.abstractmethod
    def __eq__(self, other: object) -> bool:
        """Jobs are equal when their ids are."""

    @property
    @abc.abstractmethod
    def id(self) -> uuid.UUID:
        """The job's id, stable for its lifetime."""

    @property
    @abc.abstractmethod
    def parameter_schema(self) -> dict[str, JSON]:
        """The schema its parameters satisfy: its service's registration schema."""

    @property
    @abc.abstractmethod
    def result_schema(self) -> dict[str, JSON]:
        """The schema its results must satisfy: its service's result schema."""

    @property
    @abc.abstractmethod
    def status(self) -> Job.JobStatus:
        """Where the job is in its lifecycle."""

    @status.setter
    @abc.abstractmethod
    def status(self, new_status: Job.JobStatus) -> None:
        """Move the job forward; a backwards move raises."""

    @property
    @abc.abstractmethod
    def parameters(self) -> dict[str, JSON]:
        """The parameters it was submitted with."""

    @property
    @abc.abstractmethod
    def results(self) -> dict[str, JSON] | None:
        """Its results, once it has completed."""

    @results.setter
    @abc.abstractmethod
    def results(self, new_results: dict[str, JSON]) -> None:
        """Set the results; they are validated against the result schema first."""

    @property
    @abc.abstractmethod
    def date_submitted(self) -> datetime:
        """When the job was created (timezone-aware)."""
