"""The API's self-description, taken from the settings."""

from __future__ import annotations

from broker.models.interfaces.api_metadata import APIMetadata as APIMetadataInterface
from broker.settings import Settings


class APIMetadata(APIMetadataInterface):
    """Metadata read from a ``Settings`` (by default, from the environment)."""

    def __init__(self, app_configuration: Settings | None = None) -> None:
        self._settings = app_configuration if app_configuration is not None else Settings.from_env()

    @property
    def documentation_url(self) -> str:
        return self._settings.documentation_url

    @property
    def maintainer_email(self) -> str:
        return self._settings.maintainer_email

    @property
    def maintainer_name(self) -> str:
        return self._settings.maintainer_name

    @property
    def source_code_repository_url(self) -> str:
        return self._settings.source_code_repository_url

    @property
    def version(self) -> str:
        return self._settings.version
