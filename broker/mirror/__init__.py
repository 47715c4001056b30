"""The state mirror: the one process that applies the state stream to SQL."""
