"""The seed's contract: abstract base classes every model implements."""

from broker.models.interfaces.api_error import APIError
from broker.models.interfaces.api_metadata import APIMetadata
from broker.models.interfaces.job import Job
from broker.models.interfaces.job_list import JobList
from broker.models.interfaces.service import Service
from broker.models.interfaces.service_list import ServiceList

__all__ = ["APIError", "APIMetadata", "Job", "JobList", "Service", "ServiceList"]
