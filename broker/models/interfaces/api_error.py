"""The contract of every error a user of TopChef can see."""

from __future__ import annotations

import abc


class APIError(Exception, abc.ABC):
    """A reportable error: what went wrong, in words and as an HTTP status code."""

    def __new__(cls, *args: object, **kwargs: object) -> APIError:
        # ``Exception.__new__`` skips the ABC check that ``object.__new__`` makes,
        # so without this an incomplete error class would instantiate.
        if cls.__abstractmethods__:
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise TypeError(f"Can't instantiate abstract class {cls.__name__} without {missing}")
        return super().__new__(cls, *args, **kwargs)

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
