"""Alembic's scripts for the TopChef schema; run them with ``broker.migrate.upgrade``."""
