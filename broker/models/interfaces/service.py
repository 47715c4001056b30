"""The contract of a service: an instrument or simulation that processes jobs."""

from __future__ import annotations

import abc
import uuid
from typing import Any

from sqlalchemy.orm import Session

from broker.models.interfaces.job import JSON, Job
from broker.models.interfaces.job_list import JobList


class Service(abc.ABC):
    """A service and the jobs it manages.

    Its two schemas cannot change after creation: a job that completed against
    them must stay valid.
    """

    @property
    @abc.abstractmethod
    def id(self) -> uuid.UUID:
        """The service's id, stable when it is renamed."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A human-readable name, unique among services."""

    @name.setter
    @abc.abstractmethod
    def name(self, new_name: str) -> None: ...

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """What the service does, for humans."""

    @description.setter
    @abc.abstractmethod
    def description(self, new_description: str) -> None: ...

    @property
    @abc.abstractmethod
    def job_registration_schema(self) -> dict[str, JSON]:
        """The JSON Schema that a job's parameters must satisfy."""

    @property
    @abc.abstractmethod
    def job_result_schema(self) -> dict[str, JSON]:
        """The JSON Schema that a job's results must satisfy."""

    @property
    @abc.abstractmethod
    def timeout(self) -> float:
        """Seconds allowed between check-ins before the service has timed out."""

    @timeout.setter
    @abc.abstractmethod
    def timeout(self, new_timeout: float) -> None: ...

    @property
    @abc.abstractmethod
    def is_service_available(self) -> bool:
        """A flag its workers raise when ready and lower when shutting down.

        Producers may consult it; jobs posted to an unavailable service are
        still queued.
        """

    @is_service_available.setter
    @abc.abstractmethod
    def is_service_available(self, available: bool) -> None: ...

    @property
    @abc.abstractmethod
    def has_timed_out(self) -> bool:
        """Whether more than ``timeout`` seconds have passed since the last check-in."""

    @property
    @abc.abstractmethod
    def jobs(self) -> JobList:
        """Every job of this service."""

    @abc.abstractmethod
    def check_in(self) -> None:
        """Reset the timeout."""

    @classmethod
    @abc.abstractmethod
    def new(
        cls,
        name: str,
        description: str,
        registration_schema: dict[str, Any],
        result_schema: dict[str, Any],
        database_session: Session,
    ) -> Service:
        """Create a service in ``database_session`` (the caller commits)."""

    @abc.abstractmethod
    def new_job(self, parameters: dict[str, JSON]) -> Job:
        """Validate ``parameters`` and add a REGISTERED job (the caller commits)."""
