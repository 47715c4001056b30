"""TopChef's models. This package exports only the interfaces (the seed's contract).

Implementations live in submodules: ``broker.models.service.Service``,
``broker.models.job.Job``, ``broker.models.job_list.JobList``,
``broker.models.service_list.ServiceList``, ``broker.models.api_metadata.APIMetadata``.
"""

from broker.models.interfaces import APIError, APIMetadata, Job, JobList, Service, ServiceList

__all__ = ["APIError", "APIMetadata", "Job", "JobList", "Service", "ServiceList"]
