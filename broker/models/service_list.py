"""The set of all services."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.errors import ServiceWithNameNotFound
from broker.models.interfaces.service import Service as ServiceInterface
from broker.models.interfaces.service_list import ServiceList as ServiceListInterface
from broker.models.service import Service
from broker.storage.tables import ServiceRow


class ServiceList(ServiceListInterface):
    """Every service in ``session``'s database, ordered by name."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def _row(self, service_id: uuid.UUID) -> ServiceRow:
        row = (
            self._session.get(ServiceRow, service_id) if isinstance(service_id, uuid.UUID) else None
        )
        if row is None:
            raise KeyError(service_id)
        return row

    def __getitem__(self, service_id: uuid.UUID) -> Service:
        return Service(self._row(service_id))

    def __setitem__(self, service_id: uuid.UUID, service: ServiceInterface) -> None:
        """Give the service at ``service_id`` the mutable state of ``service``."""
        target = Service(self._row(service_id))
        target.name = service.name
        target.description = service.description
        target.timeout = service.timeout
        target.is_service_available = service.is_service_available

    def __iter__(self) -> Iterator[Service]:
        for row in self._session.scalars(sa.select(ServiceRow).order_by(ServiceRow.name)):
            yield Service(row)

    def __len__(self) -> int:
        return int(self._session.scalar(sa.select(sa.func.count()).select_from(ServiceRow)) or 0)

    def __contains__(self, service: object) -> bool:
        if isinstance(service, ServiceInterface):
            service = service.id
        if not isinstance(service, uuid.UUID):
            return False
        return self._session.get(ServiceRow, service) is not None

    def by_name(self, name: str) -> Service:
        """The service called ``name``; ``ServiceWithNameNotFound`` when there is none.

        The error names the services whose names are close (``did you mean``):
        reading every name costs one query, and only on a miss.
        """
        row = self._session.scalars(sa.select(ServiceRow).where(ServiceRow.name == name)).first()
        if row is None:
            raise ServiceWithNameNotFound(name, self._session.scalars(sa.select(ServiceRow.name)))
        return Service(row)
