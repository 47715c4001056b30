"""What travels through Redis: key names, job and state messages, claims, the publisher and outbox.

Every process shares this layer; it knows the storage tables (the outbox and
the publication marks are SQL rows) but nothing of the models above it.
"""
