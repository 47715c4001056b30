"""The service and job that TopChef's Java client's integration tests name, seeded by id.

The JavaClient's integration tests (``src/test/java/ca/uwaterloo/iqc/topchef/
test/integration``) talk to ``http://localhost:5000`` about one service and one
job whose ids are written into them. This seeds those two into an empty
TopChef database, so that the tests can run against ``topchef api --port
5000``; ``test_gateway_clients`` replays the same exchanges on them::

    TOPCHEF_DATABASE_URL=... TOPCHEF_BROKER_URL=... python tests/client_fixtures.py

The service was last seen longer ago than its timeout, as the client's
``CheckIn`` test expects (it checks that the service has timed out, checks in,
and checks that it no longer has).
"""

from __future__ import annotations

import sys
import uuid
from datetime import timedelta

from broker.models.service import Service
from broker.producer import Producer
from broker.settings import Settings
from broker.storage.migrate import upgrade
from broker.storage.tables import ServiceRow

#: ``AbstractIntegrationTestCase.serviceId`` and ``.jobID`` of the JavaClient.
JAVA_SERVICE_ID = uuid.UUID("8dbb916e-e389-458f-8706-f0b62947545b")
JAVA_JOB_ID = uuid.UUID("a93f1c28-e3a5-4f74-ace4-4f85a2bc26d8")
#: The fixture service's check-in timeout (s); it was last seen twice as long ago.
TIMEOUT = 60.0


def seed_java_fixture(producer: Producer) -> None:
    """Add the Java client's service and its one REGISTERED job (the ids must be free)."""
    with producer.session() as session:
        service = Service.new(
            "JavaClient fixture",
            "The service TopChef's Java client's integration tests name",
            {"type": "object"},
            {"type": "object"},
            session,
            timeout=TIMEOUT,
            service_id=JAVA_SERVICE_ID,
        )
        service.new_job({}, job_id=JAVA_JOB_ID)
        session.flush()
        row = session.get(ServiceRow, JAVA_SERVICE_ID)
        assert row is not None
        row.last_checked_in = row.last_checked_in - timedelta(seconds=2 * TIMEOUT)


def main() -> int:
    settings = Settings.from_env()
    upgrade(settings.database_url)
    seed_java_fixture(Producer(settings))
    print(f"service {JAVA_SERVICE_ID}, job {JAVA_JOB_ID}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
