"""The contract of the set of all services."""

from __future__ import annotations

import abc
import uuid
from collections.abc import Iterator

from broker.models.interfaces.service import Service


class ServiceList(abc.ABC):
    """Every service posted to the API, keyed by id."""

    @abc.abstractmethod
    def __getitem__(self, service_id: uuid.UUID) -> Service:
        """The service with this id; ``KeyError`` when there is none."""

    @abc.abstractmethod
    def __setitem__(self, service_id: uuid.UUID, service: Service) -> None:
        """Make the service with this id take ``service``'s mutable state."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Service]:
        """Iterate over every service, by name."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """How many services there are."""

    @abc.abstractmethod
    def __contains__(self, service: object) -> bool:
        """Whether a service, given as a ``Service`` or as its UUID, exists."""
