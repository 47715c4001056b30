"""Alembic's scripts for the TopChef schema; run them with ``broker.storage.migrate.upgrade``."""
