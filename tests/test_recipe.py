"""dcfmt.recipe: the per-tensor compression recipe section (spec 8)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcfmt.binary import Cursor, uvar
from dcfmt.constants import KMeansInit, PruneMethod, RecipeTag
from dcfmt.errors import FormatError
from dcfmt.recipe import Recipe


def parse(data: bytes, **kw) -> Recipe:
    cur = Cursor(data, **kw)
    out = Recipe.parse(cur)
    assert cur.pos == len(data)
    return out


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_exact_bytes():
    r = Recipe(plan="paper", prune_method=PruneMethod.QUALITY, kmeans_iterations=300,
               finetuned=True, rel_error=0.5)
    assert r.to_bytes() == (bytes([1, 5]) + b"paper" + bytes([2, 1, 2]) + bytes([6, 2]) + uvar(300)
                            + bytes([8, 1, 1]) + bytes([11, 4]) + struct.pack("<f", 0.5))
    assert Recipe().to_bytes() == b""
    assert parse(b"") == Recipe()


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(
    plan=st.none() | st.text(max_size=20),
    prune_method=st.none() | st.sampled_from(list(PruneMethod)),
    parameter=st.none() | finite32,
    threshold=st.none() | finite32 | st.sampled_from([math.inf, -math.inf]),
    init=st.none() | st.sampled_from(list(KMeansInit)),
    iterations=st.none() | st.integers(0, 2**64 - 1),
    seed=st.none() | st.integers(0, 2**64 - 1),
    finetuned=st.none() | st.booleans(),
    retrained=st.none() | st.booleans(),
    err=st.none() | finite32,
)
def test_roundtrip(plan, prune_method, parameter, threshold, init, iterations, seed, finetuned,
                   retrained, err):
    r = Recipe(plan=plan, prune_method=prune_method, prune_parameter=parameter,
               prune_threshold=threshold, kmeans_init=init, kmeans_iterations=iterations, seed=seed,
               finetuned=finetuned, retrained=retrained, error_bound=err, rel_error=err,
               max_abs_error=err)
    assert parse(r.to_bytes()) == r
    d = r.to_dict()
    assert set(d) == {k for k, v in vars(r).items() if v is not None}
    if prune_method is not None:
        assert d["prune_method"] == prune_method.name.lower()


def test_floats_are_stored_as_float32_and_clamped():
    r = parse(Recipe(rel_error=0.1, max_abs_error=1e300, error_bound=-1e300,
                     prune_threshold=float("nan")).to_bytes())
    assert r.rel_error == f32(0.1)
    assert r.max_abs_error == f32(3.4028234663852886e38) and r.error_bound == -r.max_abs_error
    assert math.isnan(r.prune_threshold)
    assert r.to_dict()["prune_threshold"] == "nan"


def test_unknown_tags_and_enum_values_are_kept_or_skipped():
    data = (bytes([2, 1, 9]) + bytes([5, 1, 77]) + bytes([13, 3]) + b"xyz"
            + bytes([200, 0]) + bytes([255, 2]) + b"\x00\x01")
    r = parse(data)
    assert r.prune_method == 9 and r.kmeans_init == 77  # unknown enum values stay ints
    assert r.to_dict() == {"prune_method": 9, "kmeans_init": 77}


def _fails(data: bytes, rule: str, words: str = ""):
    with pytest.raises(FormatError) as ei:
        Recipe.parse(Cursor(data, 1000, overrun_rule="SEC-5", tensor="w"))
    assert type(ei.value) is FormatError and ei.value.rule == rule, ei.value
    assert ei.value.tensor == "w" and words in ei.value.message
    return ei.value


def test_tags_must_ascend():
    _fails(bytes([2, 1, 1, 1, 1, 65]), "RCP-1", "ascend")
    _fails(bytes([8, 1, 1, 8, 1, 0]), "RCP-1")        # duplicate tag
    _fails(bytes([0, 0]), "RCP-1")                    # tag 0 is never valid


@pytest.mark.parametrize("field", [
    bytes([2, 0]),                          # u8 field with no byte
    bytes([2, 2, 1, 1]),                    # u8 field with an extra byte
    bytes([11, 3]) + b"abc",                # f32 field of 3 bytes
    bytes([11, 5]) + bytes(5),              # f32 field of 5 bytes
    bytes([6, 2, 0x80, 0x80]),              # uvar running past its field
    bytes([7, 0]),                          # empty uvar field
])
def test_field_length_must_match_its_type(field):
    _fails(field, "RCP-2")


def test_plan_name_must_be_utf8():
    err = _fails(bytes([1, 2]) + b"\xc3\x28", "RCP-2", "UTF-8")
    assert err.offset == 1000 + 2


def test_bool_fields_are_0_or_1():
    err = _fails(bytes([8, 1, 2]), "RCP-3", "not 0 or 1")
    assert err.offset == 1002
    _fails(bytes([9, 1, 255]), "RCP-3")


def test_field_longer_than_the_section():
    err = _fails(bytes([1, 10]) + b"abc", "RCP-2", "10 bytes")  # spec 8, RCP-2
    assert err.offset == 1000
    _fails(bytes([7, 3, 1]), "RCP-2")
    _fails(bytes([1]), "SEC-5")  # a tag without its length: the section ends mid-field


def test_non_minimal_varint_in_a_field():
    _fails(bytes([7, 2, 0x81, 0x00]), "PRI-1")


def test_every_tag_has_a_field():
    assert {int(t) for t in RecipeTag} == set(range(1, 13))
    r = Recipe(*([None] * 12))
    assert r.to_bytes() == b""
    assert np.isfinite(f32(1.0))
