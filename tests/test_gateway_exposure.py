"""The gateway's and Flower's edges, as someone on the network meets them.

Links never come from the ``Host`` header a request chooses; a server on an
address other PCs reach starts only with authentication, or when its operator
forces it; every refusal, waitress's own included, is TopChef's JSON error.
Through real ``topchef api`` and ``topchef flower`` processes where the
command's behaviour is the point, and the gateway served by waitress elsewhere.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lab
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from support import (
    environment,
    start_in_session,
    stop_session,
    unconfigured_environment,
    wait_for,
)

from broker.errors import ConfigurationError
from broker.gateway.app import create_app
from broker.gateway.refusals import refusal
from broker.ops.exposure import FORCE_FLAG, flower_logins, is_loopback
from broker.settings import Settings, base_url

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures

EVIL = "evil.example"
#: What a forged request says about where it was sent.
FORGED = {"Host": EVIL, "X-Forwarded-Host": EVIL, "X-Forwarded-Proto": "gopher"}


# -- links ------------------------------------------------------------------------------------


def _answers_naming_nothing_forged(url: str, prefix: str = "") -> list[requests.Response]:
    """Every kind of answer that carries a link, each asked with a forged Host."""
    base = url + prefix

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**FORGED, **kwargs.pop("headers", {})}
        response = requests.request(method, base + path, headers=headers, timeout=30, **kwargs)
        assert response.status_code < 500, response.text
        return response

    body = {
        "name": f"Forged {uuid.uuid4()}",
        "description": "asked with a forged Host",
        "job_registration_schema": lab.NUMBER_SCHEMA,
        "job_result_schema": lab.SQUARE_RESULTS,
    }
    created = call("POST", "/services", json=body)
    data = created.json()["data"]
    service = (data.get("service_details") or data)["id"]
    submitted = call("POST", f"/services/{service}/jobs", json={"parameters": {"x": 2}})
    data = submitted.json()["data"]
    job = (data.get("job_details") or data)["id"]
    for x in (3, 4):
        call("POST", f"/services/{service}/jobs", json={"parameters": {"x": x}})
    return [
        created,
        submitted,
        call("GET", "/"),
        call("GET", "/services"),
        call("GET", f"/services/{service}"),
        call("PATCH", f"/services/{service}"),
        call("GET", f"/services/{service}/jobs?limit=1&offset=1"),
        call("GET", f"/services/{service}/queue"),
        call("GET", f"/services/{service}/jobs/next"),
        call("GET", "/jobs?limit=1&offset=1"),
        call("GET", f"/jobs/{job}"),
        call("GET", f"/jobs/{job}/history"),
        call("POST", f"/jobs/{job}/resubmit"),
        call("POST", f"/services/{service}/jobs/claim", headers={"X-TopChef-Worker": "r"}),
        call("GET", "/validator"),
        call("GET", "/nowhere"),
        call("DELETE", "/services"),
        call("GET", f"/jobs/{uuid.uuid4()}"),
    ]


def _links(response: requests.Response) -> list[str]:
    found = [response.headers[name] for name in ("Location",) if name in response.headers]
    if response.content:
        found += list(response.json().get("links", {}).values())
    return found


@pytest.mark.parametrize("prefix", ["", "/legacy"])
def test_no_answer_names_the_host_a_request_forged(gateway, prefix):
    answers = _answers_naming_nothing_forged(gateway.url, prefix)

    for response in answers:
        assert EVIL not in response.text, (response.url, response.text)
        assert all(EVIL not in value for value in response.headers.values()), response.headers
        for link in _links(response):
            assert link.startswith(prefix + "/"), (response.url, link)  # a path, no host
    locations = [r.headers["Location"] for r in answers if "Location" in r.headers]
    assert len(locations) == 3  # a service, a job, a resubmission
    paged = answers[6].json()["links"]
    assert set(paged) == {"self", "next", "prev"}
    service = answers[4].json()["data"]["id"]
    assert paged["next"] == f"{prefix}/services/{service}/jobs?offset=2&limit=1"


def test_no_host_a_request_forges_comes_back_on_any_route(gateway, api):
    """Hypothesis: forged Host and X-Forwarded-* values, any route and method, either prefix."""
    service = api.create_service()
    job = api.submit(service, {"x": 1})
    paths = [
        re.sub(r"<job_id>", job, re.sub(r"<service_id>", service, rule))
        for rule in {r.rule for r in gateway.server.app.url_map.iter_rules()}
    ]
    hosts = st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,10}){0,3}(:[0-9]{1,5})?", fullmatch=True)

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(
        host=hosts.map(lambda text: f"zq{text}"),  # a prefix nothing the gateway writes holds
        path=st.sampled_from(paths),
        method=st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"]),
        prefix=st.sampled_from(["", "/legacy"]),
    )
    def check(host: str, path: str, method: str, prefix: str) -> None:
        forged = {"Host": host, "X-Forwarded-Host": host, "X-Forwarded-Server": host}
        if path.endswith("/claim"):
            path += "?wait=0"
        response = requests.request(
            method, gateway.url + prefix + path, headers=forged, json={}, timeout=30
        )
        assert response.status_code < 500, response.text
        assert host not in response.text, (method, path, response.text)
        assert all(host not in value for value in response.headers.values()), response.headers

    check()


def test_links_start_with_the_configured_base_url(make_gateway):
    served = make_gateway(api_base_url="https://lab.example/topchef")
    answers = _answers_naming_nothing_forged(served.url, "/legacy")

    links = [link for response in answers for link in _links(response)]
    assert links
    assert all(link.startswith("https://lab.example/topchef/legacy/") for link in links), links
    assert all(EVIL not in response.text for response in answers)


def test_a_self_link_quotes_what_the_request_put_in_it(api):
    response = api.get("/jobs", params={"status": "REGISTERED", "x": '"><script>\x1b[31m'})
    link = response.json()["links"]["self"]
    assert link.startswith("/jobs?")
    assert not set(link) & set('"<> \x1b'), link
    missing = api.get("/nowhere/%1b%0a%3Cscript%3E" + "a" * 5000)
    detail = missing.json()["errors"][0]["detail"]
    assert not set(detail) & set("\x1b\n<"), detail
    assert len(detail) < 300
    assert missing.headers["X-Content-Type-Options"] == "nosniff"


# -- settings -------------------------------------------------------------------------------


def test_the_base_url_setting_is_checked_and_kept_without_its_trailing_slash():
    env = {"TOPCHEF_API_BASE_URL": " https://lab.example/topchef/ "}
    assert Settings.from_env(env).api_base_url == "https://lab.example/topchef"
    assert Settings.from_env({}).api_base_url == ""
    for bad in (
        "lab.example",
        "ftp://lab.example",
        "https://u:p@lab.example",
        "http://x/?a=1",
        "http://x/#f",
        "http://x:0",
        "http://x/a b",
        'http://x/"',
        "https://",
    ):
        with pytest.raises(ConfigurationError, match="TOPCHEF_API_BASE_URL must be"):
            Settings.from_env({"TOPCHEF_API_BASE_URL": bad})


@given(st.text(max_size=60))
def test_a_base_url_is_refused_or_safe_to_put_in_a_header(text):
    try:
        url = base_url(text, "S")
    except ConfigurationError:
        return  # refused, in the words the test above checks
    assert re.fullmatch(r"https?://[!-~]+", url), url
    assert not set(url) & set('"<>\\^`{|}?#')


def test_a_blank_token_is_refused_not_taken_for_none():
    for blank in (" ", "\t", "  \n "):
        with pytest.raises(ConfigurationError, match="TOPCHEF_API_TOKEN is set but blank"):
            Settings.from_env({"TOPCHEF_API_TOKEN": blank})
    assert Settings.from_env({"TOPCHEF_API_TOKEN": ""}).api_token == ""  # empty: unset
    assert Settings.from_env({"TOPCHEF_API_TOKEN": " t0k "}).api_token == "t0k"


def test_loopback_is_this_pc_alone():
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.0.2.7", "10.0.0.1", "::ffff:127.0.0.1"):
        assert not is_loopback(host), host
    with pytest.raises(ConfigurationError, match="cannot listen on"):
        is_loopback("no-such-host.invalid")


def test_flower_logins_are_read_as_flower_reads_them_and_blank_ones_refused():
    assert flower_logins({}) == (None, False)
    assert flower_logins({"FLOWER_BASIC_AUTH": " lab:pw,ops:x "}) == ("lab:pw,ops:x", True)
    assert flower_logins({"FLOWER_AUTH": ".*@lab\\.example"}) == (None, True)
    for bad in ({"FLOWER_BASIC_AUTH": ""}, {"FLOWER_BASIC_AUTH": "  "}, {"FLOWER_AUTH": " "}):
        with pytest.raises(ConfigurationError, match="is set but blank"):
            flower_logins(bad)
    for bad_pair in ("lab", "lab:", ":pw", "lab:pw,", "lab:pw, :x"):
        with pytest.raises(ConfigurationError, match="must be user:password"):
            flower_logins({"FLOWER_BASIC_AUTH": bad_pair})


# -- the commands, as started from a shell ---------------------------------------------------


def _refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, (result.args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.slow
def test_servers_open_to_the_network_without_a_login_are_refused_in_one_line(tmp_path):
    database = f"sqlite:///{tmp_path / 'never.sqlite3'}"
    # Refused before either is reached: nothing answers at this broker.
    env = unconfigured_environment(
        TOPCHEF_BROKER_URL="redis://127.0.0.1:1/0", TOPCHEF_DATABASE_URL=database
    )
    blank = {"TOPCHEF_API_TOKEN": "   "}
    # (arguments, variables, what the line says, whether it is about the network)
    cases = [
        (["api", "--host", "0.0.0.0", "--port", "0"], {}, "TOPCHEF_API_TOKEN", True),
        (["api", "--host", "::", "--port", "0"], {}, "TOPCHEF_API_TOKEN", True),
        (["api", "--host", "", "--port", "0"], {}, "every interface", True),
        (["api", "--port", "0"], blank, "TOPCHEF_API_TOKEN is set but blank", False),
        (["api", "--port", "0", "--base-url", "lab.example"], {}, "--base-url must be", False),
        (["flower", "--address", "0.0.0.0"], {}, "FLOWER_BASIC_AUTH=user:password", True),
        (["flower"], {"FLOWER_BASIC_AUTH": " "}, "FLOWER_BASIC_AUTH is set but blank", False),
        (["flower", "--address", "0.0.0.0"], {"FLOWER_BASIC_AUTH": "lab"}, "user:pass", False),
    ]
    started = {
        index: subprocess.Popen(
            [sys.executable, "-m", "broker", *args],
            env={**env, **extra},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for index, (args, extra, _, _) in enumerate(cases)
    }
    for index, popen in started.items():
        out, err = popen.communicate(timeout=60)
        result = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
        _, _, expected, network = cases[index]
        if network:
            _refused(result, expected, FORCE_FLAG, "anyone on the network")
        else:
            _refused(result, expected)
    assert not (tmp_path / "never.sqlite3").exists()  # refused before touching anything


class _Api:
    """A ``topchef api`` process started as a shell starts it; its banner and its URL."""

    def __init__(self, stack: Any, tmp_path: Path, *args: str, **env: str) -> None:
        log = tmp_path / f"api-{uuid.uuid4().hex[:6]}.log"
        self.log = log
        self.popen = start_in_session(
            [sys.executable, "-m", "broker", "api", "--port", "0", *args],
            tmp_path,
            {**environment(stack.settings), **env},
            log,
        )
        found = wait_for(
            lambda: (
                self.popen.poll() is not None
                or re.search(r"TopChef API on http://(\S+):(\d+)/ \((.*)\)", log.read_text())
            ),
            60,
            "topchef api to listen",
        )
        assert self.popen.poll() is None, log.read_text()
        self.banner = found.group(0)
        self.url = f"http://127.0.0.1:{found.group(2)}"

    def stop(self) -> None:
        assert stop_session(self.popen, signal.SIGTERM) == 0, self.log.read_text()


@pytest.fixture
def started(stack: Any, tmp_path: Path) -> Iterator[Any]:
    running: list[_Api] = []

    def start(*args: str, **env: str) -> _Api:
        running.append(_Api(stack, tmp_path, *args, **env))
        return running[-1]

    yield start
    for api in running:
        stop_session(api.popen, signal.SIGKILL)


@pytest.mark.slow
def test_the_api_opens_to_the_network_with_a_token_or_when_forced_and_says_so(started):
    forced = started("--host", "0.0.0.0", FORCE_FLAG)
    guarded = started("--host", "0.0.0.0", TOPCHEF_API_TOKEN="s3cret")

    assert "no token required: anyone on the network may" in forced.banner
    assert requests.get(forced.url + "/services", timeout=10).status_code == 200
    assert "bearer token required" in guarded.banner
    assert requests.get(guarded.url + "/services", timeout=10).status_code == 401
    forced.stop()
    guarded.stop()


@pytest.mark.slow
def test_topchef_api_writes_links_from_its_base_url_never_the_host(started):
    api = started("--base-url", "https://lab.example/topchef/")
    assert "links start with https://lab.example/topchef" in api.banner

    answers = _answers_naming_nothing_forged(api.url)

    assert all(EVIL not in response.text for response in answers)
    links = [link for response in answers for link in _links(response)]
    assert all(link.startswith("https://lab.example/topchef/") for link in links), links
    api.stop()


def _routes(settings: Settings) -> list[tuple[str, str]]:
    """Every (method, path) the gateway serves, with ids filled in, under both prefixes."""
    app = create_app(settings)
    routes = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<\w+>", str(uuid.uuid4()), rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes += [(method, path), (method, "/legacy" + path)]
    return routes


def _raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is (no client's checks), and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n", 1))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_each_refusal_of_waitress_is_told_in_words_of_our_own():
    assert refusal(413, "Request Entity Too Large", 1000).detail == (
        "Request bodies may be at most 1000 bytes"
    )
    for code in (400, 431, 500, 501):
        error = refusal(code, "Reason", 1000)
        assert (error.status_code, error.title) == (code, "Reason")
        assert error.detail  # never waitress's text, which quotes the request


def _json_error(status: int, headers: dict[str, str], body: bytes, code: int) -> dict[str, Any]:
    assert status == code, body
    assert headers["content-type"] == "application/json", headers
    assert headers["x-content-type-options"] == "nosniff"
    (error,) = json.loads(body)["errors"]
    assert set(error) == {"status_code", "title", "detail"}
    assert error["status_code"] == code
    return dict(error)


@pytest.mark.slow
def test_every_refusal_of_a_real_gateway_is_the_json_error_format(started, stack):
    """413 on every route, declared or chunked, small or far over the limit; and waitress's own."""
    api = started(TOPCHEF_API_MAX_BODY_BYTES="1000", TOPCHEF_API_TOKEN="s3cret")
    limit = "Request bodies may be at most 1000 bytes"

    for method, path in _routes(stack.settings):
        for size in (1001, 10**6):  # Flask's refusal, and waitress's before it buffers
            declared = requests.request(method, api.url + path, data=b"x" * size, timeout=30)
            assert declared.status_code == 413, (method, path, size, declared.text)
            assert declared.json()["errors"][0]["detail"] == limit
            assert declared.headers["Content-Type"] == "application/json"
        chunked = requests.request(
            method, api.url + path, data=iter([b"x" * 600, b"x" * 600]), timeout=30
        )
        assert chunked.status_code == 413, (method, path, chunked.text)
        assert chunked.json()["errors"][0]["detail"] == limit
    for size in (3000, 80_000):  # chunked, then far over: waitress stops reading and refuses
        status, headers, body = _raw(
            api.url,
            b"POST /services HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (1000, b"x" * 1000) for _ in range(size // 1000))
            + b"0\r\n\r\n",
        )
        assert _json_error(status, headers, body, 413)["detail"] == limit

    malformed = _raw(api.url, b'GET / HTTP/1.1\r\nHost: x\r\nBad "<header>"\r\n\r\n')
    assert b"<header>" not in malformed[2]
    _json_error(*malformed, 400)
    bad_chunk = b"POST /services HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    _json_error(*_raw(api.url, bad_chunk), 400)
    coding = b"POST /services HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
    _json_error(*_raw(api.url, coding), 501)
    fits = requests.post(
        api.url + "/validator",
        json={"schema": {}, "object": "x" * 900},
        headers={"Authorization": "Bearer s3cret"},
        timeout=30,
    )
    assert fits.status_code == 200, fits.text
    api.stop()


@pytest.mark.slow
def test_flower_opens_to_the_network_only_when_forced_and_says_so(stack, tmp_path):
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in environment(stack.settings).items() if not k.startswith("FLOWER_")}
    log = tmp_path / "flower.log"
    flower = start_in_session(
        [
            sys.executable,
            "-m",
            "broker",
            "flower",
            "--address",
            "0.0.0.0",
            "--port",
            str(port),
            FORCE_FLAG,
        ],
        tmp_path,
        env,
        log,
    )
    try:
        wait_for(lambda: flower.poll() is not None or _answers(port), 60, "Flower to answer")
        assert flower.poll() is None, log.read_text()
        said = log.read_text()
        assert "with no login: anyone on the network may read every job's parameters" in said
    finally:
        stop_session(flower, signal.SIGTERM)


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=5).ok
    except requests.ConnectionError:
        return False
