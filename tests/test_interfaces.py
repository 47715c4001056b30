"""The seed contract: the interfaces, their abstract members, and who implements them."""

from __future__ import annotations

import abc
import importlib
from importlib import metadata

import pytest

import broker.models
from broker.errors import ConfigurationError
from broker.models import (
    APIError,
    APIMetadata,
    Job,
    JobList,
    Service,
    ServiceList,
    api_metadata,
    errors,
    job,
    job_list,
    service,
    service_list,
)
from broker.settings import Settings

#: Every property and method the seed lists, per interface.
SEED_MEMBERS = {
    APIError: {"detail", "status_code", "title"},
    APIMetadata: {
        "documentation_url",
        "maintainer_email",
        "maintainer_name",
        "source_code_repository_url",
        "version",
    },
    Job: {"__hash__", "id", "parameter_schema", "result_schema", "status"},
    JobList: {
        "__aiter__",
        "__contains__",
        "__delitem__",
        "__eq__",
        "__getitem__",
        "__iter__",
        "__len__",
        "__setitem__",
    },
    Service: {
        "check_in",
        "description",
        "has_timed_out",
        "id",
        "is_service_available",
        "job_registration_schema",
        "job_result_schema",
        "jobs",
        "name",
        "new",
        "new_job",
        "timeout",
    },
    ServiceList: {"__getitem__", "__setitem__"},
}

IMPLEMENTATIONS = [
    (api_metadata.APIMetadata, APIMetadata),
    (job.Job, Job),
    (job_list.JobList, JobList),
    (service.Service, Service),
    (service_list.ServiceList, ServiceList),
    (errors.TopChefError, APIError),
]


def test_the_package_exports_exactly_the_six_interfaces():
    assert sorted(broker.models.__all__) == sorted(
        ["APIError", "APIMetadata", "Job", "JobList", "Service", "ServiceList"]
    )
    for name in broker.models.__all__:
        interface = getattr(broker.models, name)
        assert isinstance(interface, abc.ABCMeta), name
        seed_module = importlib.import_module(f"broker.models.interfaces.{_module_of(name)}")
        assert getattr(seed_module, name) is interface, name
    # The error contract is defined beside the one error root, at the bottom of
    # the package; the seed's module hands out that very class.
    assert broker.models.APIError.__module__ == "broker.errors"


def _module_of(interface: str) -> str:
    """The seed's module name for an interface: ``JobList`` lives in ``job_list``."""
    return (
        "".join(f"_{c.lower()}" if c.isupper() else c for c in interface)
        .lstrip("_")
        .replace("a_p_i_", "api_")
    )


@pytest.mark.parametrize("interface", list(SEED_MEMBERS), ids=lambda i: i.__name__)
def test_every_member_the_seed_lists_is_abstract(interface):
    missing = SEED_MEMBERS[interface] - interface.__abstractmethods__
    assert not missing, f"{interface.__name__} does not declare abstract {sorted(missing)}"


@pytest.mark.parametrize(
    "interface",
    [APIMetadata, Job, JobList, Service, ServiceList],
    ids=lambda i: i.__name__,
)
def test_an_interface_cannot_be_instantiated_nor_an_incomplete_subclass(interface):
    with pytest.raises(TypeError, match="abstract"):
        interface()
    with pytest.raises(TypeError, match="abstract"):
        type("Incomplete", (interface,), {})()


@pytest.mark.parametrize(
    ("interface", "missing"),
    [
        (Service, "check_in"),
        (Service, "new_job"),
        (JobList, "__len__"),
        (JobList, "__aiter__"),
        (Job, "status"),
        (APIMetadata, "version"),
        (ServiceList, "__setitem__"),
    ],
)
def test_leaving_out_any_one_abstract_member_prevents_instantiation(interface, missing):
    """Implement everything but ``missing``: still abstract."""
    members = {name: lambda *_a, **_k: None for name in interface.__abstractmethods__}
    members.pop(missing)
    with pytest.raises(TypeError, match=missing):
        type("AlmostComplete", (interface,), members)()
    members[missing] = lambda *_a, **_k: None
    type("Complete", (interface,), members)()  # all there: fine


def test_an_incomplete_api_error_cannot_be_instantiated():
    """``Exception.__new__`` skips the ABC check, so APIError must make it itself."""
    with pytest.raises(TypeError, match="detail"):
        type("Incomplete", (APIError,), {})("detail")
    members = {name: property(lambda _self: 400) for name in APIError.__abstractmethods__}
    assert type("Complete", (APIError,), members)("detail").status_code == 400


@pytest.mark.parametrize(
    ("implementation", "interface"), IMPLEMENTATIONS, ids=lambda c: c.__qualname__
)
def test_implementations_subclass_their_interface(implementation, interface):
    assert issubclass(implementation, interface)
    assert not implementation.__abstractmethods__


def test_job_status_has_the_five_statuses():
    assert {status.name for status in Job.JobStatus} == {
        "REGISTERED",
        "WORKING",
        "COMPLETED",
        "ERROR",
        "CANCELLED",
    }
    assert job.Job.JobStatus is Job.JobStatus
    assert Job.JobStatus("WORKING") is Job.JobStatus.WORKING
    assert str(Job.JobStatus.ERROR) == "ERROR"


# -- APIMetadata and Settings -------------------------------------------------


def test_api_metadata_returns_the_configured_values():
    settings = Settings(
        database_url="sqlite://",
        maintainer_name="Ada",
        maintainer_email="ada@example.org",
        documentation_url="https://docs.example.org",
        source_code_repository_url="https://git.example.org/topchef",
        version="9.8.7",
    )
    metadata_ = api_metadata.APIMetadata(settings)
    assert isinstance(metadata_, APIMetadata)
    assert metadata_.maintainer_name == "Ada"
    assert metadata_.maintainer_email == "ada@example.org"
    assert metadata_.documentation_url == "https://docs.example.org"
    assert metadata_.source_code_repository_url == "https://git.example.org/topchef"
    assert metadata_.version == "9.8.7"


def test_settings_from_env_reads_topchef_values_and_keeps_defaults():
    settings = Settings.from_env(
        {
            "TOPCHEF_DATABASE_URL": "postgresql://db/topchef",
            "TOPCHEF_MAINTAINER_NAME": "Grace",
            "TOPCHEF_LEASE_SECONDS": "12.5",
            "TOPCHEF_BEAT_INTERVAL": "",  # empty: the default
            "MAINTAINER_EMAIL": "not-prefixed@example.org",  # ignored
        }
    )
    defaults = Settings()
    assert settings.database_url == "postgresql://db/topchef"
    assert settings.maintainer_name == "Grace"
    assert settings.lease_seconds == 12.5
    assert settings.beat_interval == defaults.beat_interval
    assert settings.maintainer_email == defaults.maintainer_email
    assert settings.broker_url == defaults.broker_url
    assert settings.version == metadata.version("topchef-broker")


def test_settings_from_env_with_nothing_set_is_the_defaults():
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize("value", ["soon", "1,5", "-3", "0"])
def test_settings_reject_a_bad_number(value):
    with pytest.raises(ConfigurationError, match="TOPCHEF_VISIBILITY_TIMEOUT"):
        Settings.from_env({"TOPCHEF_VISIBILITY_TIMEOUT": value})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_settings_reject_a_number_that_is_not_finite(value):
    with pytest.raises(ConfigurationError, match="TOPCHEF_VISIBILITY_TIMEOUT"):
        Settings.from_env({"TOPCHEF_VISIBILITY_TIMEOUT": value})
