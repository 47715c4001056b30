"""The contract of every error a user of TopChef can see."""

from __future__ import annotations

import abc


class APIError(Exception, abc.ABC):
    """A reportable error: what went wrong, in words and as an HTTP status code."""

    @property
    @abc.abstractmethod
    def status_code(self) -> int:
        """The HTTP status code that best describes this error (404 for a missing service)."""

    @property
    @abc.abstractmethod
    def title(self) -> str:
        """A title common to every error of this kind."""

    @property
    @abc.abstractmethod
    def detail(self) -> str:
        """What happened to this request in particular."""
