"""Benchmarks: TopChef beside raw Celery, RQ and Dramatiq, on one machine in one run.

``python -m bench`` runs everything and prints a table (``--smoke`` runs a
tiny version in well under a minute, so that the harness never rots);
``bench/RESULTS.md`` records a full run. The harness starts its own Redis
server and works in a PostgreSQL schema of its own, and removes both.
"""
