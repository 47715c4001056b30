"""Closing the gateway's server: answers under way arrive, then every socket and thread is gone."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
from support import wait_for

from broker.gateway import Server
from broker.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def settings(stack_settings: Settings) -> Settings:
    return stack_settings


@pytest.fixture
def threads_before() -> set[threading.Thread]:
    return set(threading.enumerate())


def _left_over(before: set[threading.Thread]) -> list[threading.Thread]:
    """The server threads (waitress's request threads, the loop's, the closer's) still alive."""
    return [
        thread
        for thread in threading.enumerate()
        if thread not in before and thread.name.startswith(("waitress", "topchef-api"))
    ]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_closing_with_an_idle_keep_alive_client_leaves_no_socket_or_thread(
    settings: Settings, threads_before: set[threading.Thread]
) -> None:
    server = Server(settings, threads=4).start()
    client = requests.Session()
    assert client.get(server.url + "/", timeout=10).status_code == 200  # kept alive

    started = time.monotonic()
    server.close()

    assert time.monotonic() - started < 3
    assert _refused(server.port)
    # waitress's request threads, the loop's and the closer's have all ended.
    wait_for(lambda: not _left_over(threads_before), 5, "the server's threads to end")
    with pytest.raises(requests.ConnectionError):
        client.get(server.url + "/", timeout=10)
    client.close()


def test_a_request_under_way_when_closing_starts_gets_its_answer(
    settings: Settings, threads_before: set[threading.Thread]
) -> None:
    server = Server(settings, threads=4)
    entered = threading.Event()

    def slow() -> str:
        entered.set()
        time.sleep(1.0)
        return "finished"

    server.app.add_url_rule("/slow", "slow", slow)
    server.start()
    answers: list[requests.Response] = []
    caller = threading.Thread(
        target=lambda: answers.append(requests.get(server.url + "/slow", timeout=30))
    )
    caller.start()
    assert entered.wait(10)

    server.close()

    caller.join(10)
    assert [(answer.status_code, answer.text) for answer in answers] == [(200, "finished")]
    assert _refused(server.port)
    wait_for(lambda: not _left_over(threads_before), 5, "the server's threads to end")


def test_a_waiting_claim_returns_at_once_when_closing(settings: Settings) -> None:
    server = Server(settings, threads=4).start()
    api = requests.Session()
    body = {
        "name": "waiting",
        "description": "",
        "job_registration_schema": {"type": "object"},
        "job_result_schema": {"type": "object"},
    }
    created = api.post(server.url + "/services", json=body, timeout=10)
    assert created.status_code == 201, created.text
    service = created.json()["data"]["id"]
    answers: list[requests.Response] = []
    claimer = threading.Thread(
        target=lambda: answers.append(
            requests.post(f"{server.url}/services/{service}/jobs/claim?wait=60", timeout=90)
        )
    )
    claimer.start()
    time.sleep(0.5)  # the claim is waiting

    started = time.monotonic()
    api.close()
    server.close()

    claimer.join(10)
    assert time.monotonic() - started < 5
    assert [answer.status_code for answer in answers] == [204]


def test_a_server_closed_before_it_served_frees_its_port(settings: Settings) -> None:
    server = Server(settings, threads=2)
    server.close()
    server.close()  # twice is once

    with socket.create_server(("127.0.0.1", server.port)):
        pass


def test_many_quick_start_and_close_cycles_raise_nothing(
    settings: Settings, threads_before: set[threading.Thread]
) -> None:
    """The teardown that once raised EBADF now and then: threads' exceptions fail the test."""
    for _ in range(20):
        server = Server(settings, threads=2).start()
        with requests.Session() as client:
            assert client.get(server.url + "/", timeout=10).status_code == 200
            server.close()
    wait_for(lambda: not _left_over(threads_before), 10, "the servers' threads to end")
