"""Property-based: any value in any spec field gives a valid spec or a SpecError naming the field."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmlab.spec import DEFAULT_SPEC, SpecError, parse_spec

BASE = yaml.safe_load(DEFAULT_SPEC.read_text())


def leaf_paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaf_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaf_paths(value, (*prefix, index))
    yield prefix


PATHS = [p for p in leaf_paths(BASE) if p]

WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
    st.sampled_from(["", "-1", "1e309", "NaN", "10.0.0.0/8", "8.8.8.0/24", "x" * 500, "../../etc/passwd"]),
)


def with_value(path, value):
    data = copy.deepcopy(BASE)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=WRONG_VALUES)
def test_any_value_validates_or_names_field(path, value):
    data = with_value(path, value)
    try:
        parse_spec(data, source="fuzz.yaml")
    except SpecError as error:
        assert error.problems
        for field, message in error.problems:
            assert field and message
            assert "Traceback" not in message
        top = str(path[0])
        assert any(field.startswith(top) or field == "(top level)" for field, _ in error.problems), error


@settings(max_examples=100, deadline=None)
@given(document=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
))
def test_arbitrary_documents_never_crash(document):
    try:
        parse_spec(document, source="fuzz.yaml")
    except SpecError as error:
        assert error.problems
