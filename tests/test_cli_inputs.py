"""JSON arguments of ``topchef`` (inline, or ``@path``): any mistake is one line, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import topchef, unconfigured_environment

from broker.cli.options import json_argument
from broker.errors import DeserializationError
from broker.storage.migrate import upgrade

DEEP = "[" * 100_000 + "]" * 100_000


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Each bad ``--parameters`` argument, and what its one line must say."""
    (tmp_path / "latin1.json").write_bytes(b'{"name": "\xe9chantillon"}')
    (tmp_path / "deep.json").write_text(DEEP)
    (tmp_path / "digits.json").write_text("1" * 5000)
    (tmp_path / "folder").mkdir()
    (tmp_path / "secret.json").write_text("{}")
    (tmp_path / "secret.json").chmod(0)
    return {
        "long name": ("@" + "x" * 5000, "File name too long"),
        "missing": (f"@{tmp_path / 'missing.json'}", "no such file"),
        "newline in name": (f"@{tmp_path}/a\nb.json", "no such file"),
        "NUL in name": ("@a\x00b", "cannot read"),
        "unreadable": (f"@{tmp_path / 'secret.json'}", "Permission denied"),
        "invalid UTF-8": (f"@{tmp_path / 'latin1.json'}", "is not UTF-8 text"),
        "deep file": (f"@{tmp_path / 'deep.json'}", "nested too deeply"),
        "deep inline": (DEEP, "nested too deeply"),
        "long integer": (f"@{tmp_path / 'digits.json'}", "not valid JSON"),
        "directory": (f"@{tmp_path / 'folder'}", "is a directory"),
        "device": ("@/dev/zero", "not a regular file"),
        "not JSON": ("{nope", "not valid JSON"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "long name",
        "missing",
        "newline in name",
        "NUL in name",
        "invalid UTF-8",
        "deep file",
        "deep inline",
        "long integer",
        "directory",
        "device",
        "not JSON",
    ],
)
def test_each_bad_argument_is_a_one_line_deserialization_error(tmp_path, case):
    text, expected = _bad_inputs(tmp_path)[case]
    with pytest.raises(DeserializationError) as error:
        json_argument(text, "job_registration_schema")
    assert expected in error.value.detail
    assert "\n" not in str(error.value)
    assert len(str(error.value)) < 500


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_says_so(tmp_path):
    text, expected = _bad_inputs(tmp_path)["unreadable"]
    with pytest.raises(DeserializationError, match=expected):
        json_argument(text, "parameters")


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=200))
def test_any_inline_text_is_a_value_or_a_one_line_error(text):
    refused = None
    try:
        json_argument(text, "parameters")
    except DeserializationError as error:
        refused = str(error)
    assert refused is None or "\n" not in refused


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.binary(max_size=300) | st.sampled_from([b"[" * 5000, b'{"a": "\xff"}', b"\xef\xbb\xbf{}"])
)
def test_any_file_is_a_value_or_a_one_line_error(tmp_path, data):
    path = tmp_path / "input.json"
    path.write_bytes(data)
    refused = None
    try:
        json_argument(f"@{path}", "parameters")
    except DeserializationError as error:
        refused = str(error)
    assert refused is None or "\n" not in refused


@pytest.mark.slow  # a process per input
@pytest.mark.redis
@pytest.mark.postgres
def test_topchef_prints_one_line_and_exits_1_for_each_bad_argument(tmp_path, stack):
    database = f"sqlite:///{tmp_path / 'topchef.db'}"
    upgrade(database)
    env = unconfigured_environment(
        TOPCHEF_DATABASE_URL=database, TOPCHEF_BROKER_URL=stack.settings.broker_url
    )
    cases = _bad_inputs(tmp_path)
    if os.geteuid() == 0:
        del cases["unreadable"]
    if sys.platform != "linux":
        del cases["device"]
    started = {
        case: subprocess.Popen(
            topchef("services", "create", "New", "--parameters", text, "--results", "{}"),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, (text, _) in cases.items()
        if "\x00" not in text and len(text) < 100_000  # what an argv can hold
    }
    for case, process in started.items():
        out, err = process.communicate(timeout=120)
        lines = err.splitlines()
        assert process.returncode == 1, (case, err)
        assert len(lines) == 1, (case, err)
        assert "Traceback" not in err
        assert cases[case][1] in lines[0], (case, err)
        assert out == ""
