"""TopChef: a job broker for laboratory instruments.

The names a user needs are here: ``Producer`` to submit jobs, ``handles`` and
``progress`` to write a lab worker, ``Settings`` to configure either, and
``TopChefError``, the root of every error TopChef raises.

The package is built in layers; a part imports only the parts below it
(``tests/test_layout.py`` holds it to that), so each process loads only what it
runs — a producer loads no worker runtime and no beat:

====  =====================================================================
 6    ``gateway/`` (HTTP API)  ``ops/`` (supervisor, demo, metrics, status)
      ``tasks/`` (the Celery tasks of workers and beat)
 5    the processes: ``producer/``  ``worker/``  ``mirror/``  ``beat/``
 4    ``models/`` (the seed's models, the job lifecycle)  ``app`` (Celery app)
 3    ``messaging/`` (Redis keys, messages, claims, publisher, outbox)
 2    ``storage/`` (tables, migrations)  ``contract/`` (JSON Schema)  ``settings``
      ``trust/`` (signatures)  ``artifacts/`` (results of real size)
 1    ``errors``  ``actors`` (who did it)
====  =====================================================================

``cli`` (the ``topchef`` command) sits on top, beside ``celery``, the app
Celery's own ``celery -A broker`` finds (it looks for a submodule ``celery``
when the package has no ``app`` or ``celery`` attribute; ``broker.app`` is the
module that makes apps, not an app). Names are loaded on first use, so
``import broker`` alone costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.errors import TopChefError
    from broker.producer import Producer
    from broker.settings import Settings
    from broker.worker import handles, progress

__all__ = ["Producer", "Settings", "TopChefError", "handles", "progress"]

_HOMES = {
    "Producer": "broker.producer",
    "Settings": "broker.settings",
    "TopChefError": "broker.errors",
    "handles": "broker.worker",
    "progress": "broker.worker",
}


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'broker' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
