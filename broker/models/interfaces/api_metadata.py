"""The contract of the API's self-description."""

from __future__ import annotations

import abc


class APIMetadata(abc.ABC):
    """Who maintains this deployment, where its documentation and source live."""

    @property
    @abc.abstractmethod
    def documentation_url(self) -> str:
        """Where user and reference documentation can be read."""

    @property
    @abc.abstractmethod
    def maintainer_email(self) -> str:
        """Where users report bugs."""

    @property
    @abc.abstractmethod
    def maintainer_name(self) -> str:
        """The human responsible for this deployment."""

    @property
    @abc.abstractmethod
    def source_code_repository_url(self) -> str:
        """Where the source code can be inspected."""

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """The deployed version."""
