"""The example services of ``workers/``, created on demand for demos and first runs."""

from __future__ import annotations

import importlib
from types import ModuleType

from broker.beat.recovery import sync_directory
from broker.errors import ServiceWithNameNotFound
from broker.models.service_list import ServiceList
from broker.producer import Producer
from broker.settings import Settings
from broker.storage.tables import open_session

EXAMPLE_MODULES = ("workers.echo", "workers.rabi")


def example_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in EXAMPLE_MODULES]


def ensure_example_services(settings: Settings) -> None:
    """Create each example service that does not exist yet (by name).

    Existing services are re-announced to the broker's directory too, so that
    workers started next can resolve them even if Redis was emptied meanwhile.
    """
    producer = Producer(settings)
    for module in example_modules():
        with open_session(settings.database_url) as session:
            try:
                ServiceList(session).by_name(module.NAME)
                continue
            except ServiceWithNameNotFound:
                pass
        producer.create_service(
            module.NAME,
            module.DESCRIPTION,
            module.REGISTRATION_SCHEMA,
            module.RESULT_SCHEMA,
            timeout=getattr(module, "TIMEOUT", 30.0),
        )
    with open_session(settings.database_url) as session:
        sync_directory(session, producer.publisher)
