"""Producers: submit jobs to services from any Python program.

A producer talks to Redis and SQL only; importing it loads no worker runtime
and no beat.
"""

from broker.producer.client import Producer

__all__ = ["Producer"]
