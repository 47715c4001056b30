"""Lab workers: what a worker module imports to declare its handlers.

Only the declaration API is imported here, so that a lab module stays cheap to
import; the runtime that serves the handlers is ``broker.worker.runtime``.
"""

from broker.worker.handlers import Aborted, Retry, aborted, handles, on_abort, progress

__all__ = ["Aborted", "Retry", "aborted", "handles", "on_abort", "progress"]
