"""The HTTP gateway served for real (waitress on 127.0.0.1) over a test stack, and a client.

A pytest plugin: test modules load it with ``pytest_plugins = ["gateway_support"]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import lab
import pytest
import requests

from broker.gateway import Server
from broker.settings import Settings

TOKEN = "s3cret-token"


class Api:
    """A requests session bound to one gateway (and its token, if any)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.session.close()

    # -- shortcuts -----------------------------------------------------------

    def create_service(
        self,
        name: str = lab.SQUARE,
        registration: dict[str, Any] | None = None,
        results: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        body = {
            "name": name,
            "description": f"{name} over HTTP",
            "job_registration_schema": registration or lab.NUMBER_SCHEMA,
            "job_result_schema": results or lab.SQUARE_RESULTS,
            **extra,
        }
        response = self.post("/services", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["data"]["id"])

    def submit(self, service_id: str, parameters: dict[str, Any]) -> str:
        response = self.post(f"/services/{service_id}/jobs", json={"parameters": parameters})
        assert response.status_code == 201, response.text
        return str(response.json()["data"]["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


class Gateway:
    """A running gateway: its URL, a client, and a way to make more clients."""

    def __init__(self, server: Server, token: str | None) -> None:
        self.server = server
        self.url = server.url
        self.token = token
        self._clients: list[Api] = []
        self.api = self.client()

    def client(self, token: str | None = None) -> Api:
        api = Api(self.url, token if token is not None else self.token)
        self._clients.append(api)
        return api

    def close(self) -> None:
        for api in self._clients:
            api.close()
        self.server.close()


def serve(settings: Settings, token: str | None = None, **changes: Any) -> Gateway:
    settings = dataclasses.replace(settings, api_token=token or "", **changes)
    return Gateway(Server(settings, "127.0.0.1", 0, threads=8).start(), token)


@pytest.fixture
def make_gateway(stack) -> Iterator[Callable[..., Gateway]]:
    """Start more gateways over the stack: ``make_gateway(token=..., api_max_body_bytes=...)``."""
    started: list[Gateway] = []

    def start(token: str | None = None, **changes: Any) -> Gateway:
        started.append(serve(stack.settings, token, **changes))
        return started[-1]

    try:
        yield start
    finally:
        for running in started:
            running.close()


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    """The gateway, without a token, over the ``stack`` fixture's Redis and PostgreSQL."""
    running: Gateway = make_gateway()
    return running


@pytest.fixture
def api(gateway: Gateway) -> Api:
    return gateway.api
