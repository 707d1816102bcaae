import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mergefile.store import keys
from mergefile.store.keys import canonical_json, input_key, key_of, seed_from_key

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
    max_leaves=20,
)


def test_canonical_json_is_compact_sorted_utf8():
    assert canonical_json({"b": 1, "a": [1, 2.5, "é"], "c": None}) == '{"a":[1,2.5,"é"],"b":1,"c":null}'.encode()


@given(json_values)
def test_canonical_json_deterministic(value):
    assert canonical_json(value) == canonical_json(value)


@given(st.dictionaries(st.text(), st.integers(), min_size=2, max_size=8))
def test_canonical_json_order_independent(d):
    reversed_d = dict(reversed(list(d.items())))
    assert canonical_json(d) == canonical_json(reversed_d)


def test_tuples_are_lists():
    assert canonical_json((1, 2)) == canonical_json([1, 2])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"w": [1.0, math.nan]}])
def test_nan_inf_rejected(bad):
    with pytest.raises(TypeError):
        canonical_json(bad)


@pytest.mark.parametrize("bad", [{1, 2}, b"x", object(), {1: "int key"}, {"p": {("t",): 1}}])
def test_non_json_rejected(bad):
    with pytest.raises(TypeError):
        canonical_json(bad)


def test_one_and_one_point_zero_are_the_same_value():
    # Decision: numbers equal in Python are the same parameter value -> same key.
    assert canonical_json({"w": 1}) == canonical_json({"w": 1.0})
    assert key_of("node", {"w": 1}) == key_of("node", {"w": 1.0})
    assert key_of("node", {"w": 0}) == key_of("node", {"w": -0.0})
    assert key_of("node", {"w": 1}) != key_of("node", {"w": 1.5})


def test_floats_round_trip_exactly():
    assert canonical_json(0.1) == b"0.1"
    assert canonical_json(0.1 + 0.2) == b"0.30000000000000004"
    assert key_of("n", {"w": 0.1}) != key_of("n", {"w": 0.1 + 0.2})


def test_bool_distinct_from_int():
    assert canonical_json(True) == b"true"
    assert key_of("n", {"x": True}) != key_of("n", {"x": 1})
    assert key_of("n", {"x": False}) != key_of("n", {"x": 0})


def test_key_shape():
    k = key_of("node", {"method": "ties"})
    assert len(k) == 32 and int(k, 16) >= 0


@pytest.mark.parametrize(
    "field,other",
    [
        ("method", "dare"),
        ("version", 2),
        ("params", {"density": 0.6}),
        ("inputs", ["b", "a"]),
        ("dtype", "F16"),
    ],
)
def test_key_of_changes_with_each_field(field, other):
    base = {"method": "ties", "version": 1, "params": {"density": 0.5}, "inputs": ["a", "b"], "dtype": "BF16"}
    assert key_of("node", base) != key_of("node", {**base, field: other})


def test_key_of_changes_with_kind_and_hash_version(monkeypatch):
    k = key_of("node", {"a": 1})
    assert key_of("input", {"a": 1}) != k
    monkeypatch.setattr(keys, "HASH_VERSION", keys.HASH_VERSION + 1)
    assert key_of("node", {"a": 1}) != k


def test_reserved_fields_rejected():
    with pytest.raises(ValueError):
        key_of("node", {"kind": "x"})
    with pytest.raises(ValueError):
        key_of("node", {"hash_version": 0})


def test_input_key():
    k = input_key("ab" * 16, "BF16", (4, 8))
    assert k == input_key("ab" * 16, "BF16", [4, 8])
    assert k != input_key("ab" * 16, "F16", (4, 8))
    assert k != input_key("ab" * 16, "BF16", (8, 4))
    assert k != input_key("cd" * 16, "BF16", (4, 8))


def test_seed_from_key():
    k = key_of("node", {"a": 1})
    s = seed_from_key(k)
    assert s == seed_from_key(k) and 0 <= s < 2**63
    assert seed_from_key(k, 1) != s
    assert seed_from_key(key_of("node", {"a": 2})) != s
    import torch

    torch.Generator().manual_seed(s)  # accepted


class _Str(str):
    pass


@given(
    json_values
    | st.builds(_Str, st.text())
    | st.tuples(st.integers(), st.floats(allow_nan=False, allow_infinity=False))
)
def test_fast_path_normalizes_as_the_general_rules(value):
    """``_fast_normalize`` (exact builtin types) must agree with ``_normalize``, or defer to it."""
    try:
        fast = keys._fast_normalize(value)
    except keys._NotCanonical:
        return
    assert fast == keys._normalize(value, "$")
    assert canonical_json(value) == canonical_json(keys._normalize(value, "$"))
