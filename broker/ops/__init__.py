"""Running and watching a stack: the supervisor, embedded Redis, the demo, metrics, status."""
