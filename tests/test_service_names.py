"""Service names print as what they are: trimmed, printable, refused naming the character."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.cli import main
from broker.errors import DeserializationError, DuplicateServiceNameError
from broker.models.service import MAX_NAME_LENGTH, Service, checked_name
from broker.models.service_list import ServiceList

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures

PARAMETERS = {"type": "object"}
RESULTS = {"type": "object"}

#: Names that would not print as what they are, with the character each is refused for.
HIDDEN = [
    ("Echo\nForged line", "U+000A"),
    ("\x1b[31mEcho", "U+001B"),
    ("Echo\u202eoce", "U+202E"),  # right-to-left override
    ("Ec\u200bho", "U+200B"),  # zero-width space
    ("Echo\u2028X", "U+2028"),  # line separator
    ("Echo\u00a0X", "U+00A0"),  # a no-break space prints like a space
    ("Echo\x00", "U+0000"),
    ("Echo\ufeff", "U+FEFF"),  # zero-width no-break space: not whitespace, not trimmed
    ("Echo\U000e0001", "U+E0001"),  # a language tag
]


@pytest.mark.parametrize(("name", "code"), HIDDEN)
def test_a_name_that_would_not_print_as_itself_is_refused_naming_the_character(name, code):
    with pytest.raises(DeserializationError) as error:
        checked_name(name)
    assert error.value.source == "name"
    assert code in error.value.detail


@pytest.mark.parametrize(
    ("given_name", "stored"),
    [
        ("Echo ", "Echo"),
        ("\tEcho\n", "Echo"),
        ("  Spectrometer 2  ", "Spectrometer 2"),
        ("Échantillon", "Échantillon"),
        ("光谱仪", "光谱仪"),
        ("e\u0301", "e\u0301"),
    ],
)
def test_surrounding_whitespace_is_trimmed_and_the_rest_kept(given_name, stored):
    assert checked_name(given_name) == stored


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(alphabet=st.characters(codec="utf-8"), max_size=8)))
def test_any_text_is_a_clean_name_or_a_deserialization_error(text):
    try:
        name = checked_name(text)
    except DeserializationError as error:
        refused = error
    else:
        refused = None
    if refused is not None:
        assert refused.source == "name"
        assert "Traceback" not in refused.detail
        return
    assert name == text.strip()
    assert name
    assert name.isprintable()
    assert len(name) <= MAX_NAME_LENGTH
    assert checked_name(name) == name  # what is stored passes again, unchanged


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=1, max_size=20), st.sampled_from(["\n", "\x1b", "\u202e", "\u200b"]))
def test_a_hidden_character_anywhere_inside_is_refused(text, hidden):
    middle = len(text) // 2
    with pytest.raises(DeserializationError, match="may not contain U\\+"):  # this one, or
        # another of ``text`` that does not print either
        checked_name("a" + text[:middle] + hidden + text[middle:] + "a")


def test_services_are_created_and_renamed_under_their_trimmed_names(session):
    oven = Service.new("Oven ", "", PARAMETERS, RESULTS, session)
    assert oven.name == "Oven"
    with pytest.raises(DuplicateServiceNameError):
        Service.new(" Oven", "", PARAMETERS, RESULTS, session)
    with pytest.raises(DeserializationError, match="U\\+202E"):
        Service.new("Oven\u202e", "", PARAMETERS, RESULTS, session)
    oven.name = " Oven 2 "
    assert oven.name == "Oven 2"
    with pytest.raises(DeserializationError, match="U\\+000A"):
        oven.name = "Oven\n2"
    assert oven.name == "Oven 2"
    session.commit()
    assert [s.name for s in ServiceList(session)] == ["Oven 2"]


@pytest.mark.postgres
@pytest.mark.redis
def test_over_http_a_name_is_trimmed_or_refused_at_creation_and_rename(api):
    body = {"description": "", "job_registration_schema": {}, "job_result_schema": {}}
    refused = api.post("/services", json={**body, "name": "Echo\u202e"})
    assert refused.status_code == 400
    assert "U+202E" in refused.json()["errors"][0]["detail"]
    created = api.post("/services", json={**body, "name": "Echo "})
    assert created.status_code == 201, created.text
    service = created.json()["data"]
    assert service["name"] == "Echo"
    renamed = api.patch(f"/services/{service['id']}", json={"name": "Echo\x1b[2J"})
    assert renamed.status_code == 400
    assert "U+001B" in renamed.json()["errors"][0]["detail"]
    assert api.get(f"/services/{service['id']}").json()["data"]["name"] == "Echo"


@pytest.mark.postgres
@pytest.mark.redis
def test_the_cli_refuses_a_hidden_character_in_one_line(stack, monkeypatch):
    monkeypatch.setenv("TOPCHEF_DATABASE_URL", stack.settings.database_url)
    monkeypatch.setenv("TOPCHEF_BROKER_URL", stack.settings.broker_url)
    result = CliRunner().invoke(
        main,
        ["services", "create", "Oven\u200b", "--parameters", "{}", "--results", "{}"],
        catch_exceptions=False,
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "U+200B" in lines[0]
    created = CliRunner().invoke(
        main, ["services", "create", " Oven ", "--parameters", "{}", "--results", "{}"]
    )
    assert created.exit_code == 0, created.output
    assert stack.service("Oven").name == "Oven"
