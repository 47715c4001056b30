"""Thin Celery tasks: each deserialises its message, calls a plain function, reports."""
