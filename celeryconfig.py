"""Celery settings shared by every TopChef process.

The broker URL is not here: it comes from ``TOPCHEF_BROKER_URL`` (see
``broker.settings``). Override anything below by editing this module or by
setting it on the app after ``broker.app.make_app``.
"""

# JSON only, on the way out and on the way in: a pickled message is refused.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

# Outcomes travel on TopChef's state stream into SQL; no result backend.
task_ignore_result = True

# Flower sees every job from the moment it is sent until it ends: producers
# announce each job they send; workers send their task events only while a
# Flower (or `celery events`) is watching, since Flower switches them on with
# the `enable_events` control command. Always on, they cost a worker ~40% of
# its time on no-op jobs (three PUBLISH round trips per job; see bench/).
worker_send_task_events = False
task_send_sent_event = True

# A job's message is acknowledged after its handler ran, and a worker reserves
# no more than it runs: a dead worker strands as few jobs as possible.
task_acks_late = True
worker_prefetch_multiplier = 1

broker_connection_retry_on_startup = True
# A lost broker is waited for as long as it takes: a lab worker outlives restarts
# of the PC or the `topchef up` that runs Redis (`topchef worker` tries every 2 s,
# saying so: broker.worker.connection). None is "no limit"; 0 would be "no retry".
broker_connection_max_retries = None
# A job running when the broker goes keeps running: an instrument is not stopped
# by a network blip. Its report waits for Redis; a redelivery of its message is
# refused by its claim.
worker_cancel_long_running_tasks_on_connection_loss = False
worker_hijack_root_logger = False
worker_redirect_stdouts = False
enable_utc = True
timezone = "UTC"
