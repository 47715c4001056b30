"""Producers: submit jobs to services from any Python program.

A producer talks to Redis and SQL only; importing it loads no worker runtime
and no beat. The errors its calls raise are importable from here too, so a
producer program needs one import line.
"""

from broker.errors import (
    ConfigurationError,
    DeserializationError,
    DuplicateServiceNameError,
    InvalidTransitionError,
    JobCancelledError,
    JobFailedError,
    JobNotAbortableError,
    JobWithUUIDNotFound,
    NotUUIDError,
    ServiceSchemaMismatchError,
    ServiceWithNameNotFound,
    TopChefError,
    WaitTimeoutError,
)
from broker.producer.client import Producer
from broker.producer.reader import Outcome, Standing

__all__ = [
    "ConfigurationError",
    "DeserializationError",
    "DuplicateServiceNameError",
    "InvalidTransitionError",
    "JobCancelledError",
    "JobFailedError",
    "JobNotAbortableError",
    "JobWithUUIDNotFound",
    "NotUUIDError",
    "Outcome",
    "Producer",
    "ServiceSchemaMismatchError",
    "ServiceWithNameNotFound",
    "Standing",
    "TopChefError",
    "WaitTimeoutError",
]
