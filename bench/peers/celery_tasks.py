"""Raw Celery: the same broker and pool as TopChef's workers; no validation, no mirror."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from bench.peers import QUEUE, mark_done

app = Celery("bench_raw", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(parameters: dict[str, Any]) -> None:
    mark_done()
