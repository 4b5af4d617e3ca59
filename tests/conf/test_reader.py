"""conf/reader.py: the validating reader collects every problem in one pass, with path and what is allowed."""

import math

import pytest

from django_aio_request.conf.reader import (
    SECONDS,
    Problem,
    Reader,
    boolean,
    fields,
    integer,
    names,
    number,
    optional,
    priority,
)
from django_aio_request.core.priority import Priority


def test_reading_goes_on_after_a_problem_so_every_problem_is_reported() -> None:
    reader = Reader()
    schema = {"TIMEOUT": (SECONDS, 20.0), "WORKERS": (integer(1), 4), "ON": (boolean, True)}

    got = fields(reader, "['X']", {"TIMEOUT": -1, "WORKERS": 0, "ON": "yes"}, schema)

    assert got == {"TIMEOUT": None, "WORKERS": None, "ON": None}
    assert [p.path for p in reader.problems] == ["['X']['TIMEOUT']", "['X']['WORKERS']", "['X']['ON']"]
    assert str(reader.problems[0]) == (
        "AIO_REQUEST['X']['TIMEOUT'] must be a number of seconds > 0, not -1 [django_aio_request.E003]"
    )
    assert [p.code for p in reader.problems] == ["E003", "E003", "E002"]  # bad numbers, a wrong type


def test_missing_keys_take_their_defaults() -> None:
    reader = Reader()
    assert fields(reader, "", {}, {"TIMEOUT": (SECONDS, 20.0)}) == {"TIMEOUT": 20.0}
    assert reader.problems == []


@pytest.mark.parametrize("value", [True, "1", math.nan, math.inf, -0.1, None])
def test_numbers_refuse_booleans_strings_and_non_finite_values(value: object) -> None:
    reader = Reader()
    assert number(0)(reader, "['N']", value) is None
    assert len(reader.problems) == 1


def test_number_bounds_are_named_in_the_message() -> None:
    reader = Reader()
    assert number(0, inclusive=False, below=1, what="a ratio")(reader, "['R']", 1.0) is None
    assert reader.problems[0].message == "must be a ratio > 0 and < 1, not 1.0"


def test_optional_accepts_none_as_no_limit() -> None:
    reader = Reader()
    assert optional(integer(0))(reader, "['MAX']", None) is None
    assert optional(integer(0))(reader, "['MAX']", 5) == 5
    assert reader.problems == []


def test_unknown_keys_are_reported_with_the_allowed_ones() -> None:
    reader = Reader()
    reader.mapping("['CLIENTS']['billing']", {"ENDPOINT": "http://b/", "TIMOUT": 1}, ("ENDPOINT", "TIMEOUT"))
    (problem,) = reader.problems
    assert problem == Problem(
        "['CLIENTS']['billing']['TIMOUT']",
        "is not a known key",
        "did you mean 'TIMEOUT'? allowed keys: ENDPOINT, TIMEOUT",
        code="E001",
    )


def test_priorities_and_names() -> None:
    reader = Reader()
    assert priority(reader, "['P']", "HIGH") is Priority.HIGH
    assert priority(reader, "['P']", "urgent") is None
    assert "allowed: high, normal, low" in (reader.problems[-1].hint or "")
    assert names(reader, "['K']", [" Shop ", "billing"]) == frozenset({"shop", "billing"})
    assert names(reader, "['K']", "shop") is None  # a string is not a list of names
    assert names(reader, "['K']", ["", "x"]) is None
