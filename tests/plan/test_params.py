"""Parameter resolution: filters, gradients and precedence against hand-computed values."""

import pytest

from mergefile.errors import ConfigError
from mergefile.methods.base import ParamSpec
from mergefile.plan.params import Level, gradient_value, layer_t, pick, resolve
from mergefile.syntax.ast import Param, Sym

W = ParamSpec("weight", per_model=True)


def test_gradient_interpolates_piecewise_linearly():
    v = (0.0, 0.5, 0.3, 0.7, 1.0)
    assert gradient_value(v, 0.0) == 0.0
    assert gradient_value(v, 1.0) == 1.0
    assert gradient_value(v, 0.25) == pytest.approx(0.5)
    assert gradient_value(v, 0.375) == pytest.approx(0.5 * 0.5 + 0.5 * 0.3)
    assert gradient_value((0.2, 0.8), 1 / 3) == pytest.approx(0.4)


def test_gradient_non_numeric_picks():
    assert gradient_value(("a", "b", "c"), 0.6) == "b"
    assert gradient_value(("a", "b", "c"), 1.0) == "c"


def test_layer_t():
    assert [layer_t(i, 4) for i in range(4)] == [0, 1 / 3, 2 / 3, 1]
    assert layer_t(None, 4) == 0.0
    assert layer_t(0, 1) == 1.0


def test_filters_first_match_then_fallback():
    ps = (Param("weight", 0.1), Param("weight", 0.5, "mlp"), Param("weight", 0.7, "self_attn"))
    assert pick(ps, "weight", "model.layers.0.mlp.up_proj.weight").value == 0.5
    assert pick(ps, "weight", "model.layers.0.self_attn.q_proj.weight").value == 0.7
    assert pick(ps, "weight", "model.norm.weight").value == 0.1
    assert pick(ps, "density", "x") is None


def test_precedence_source_slice_target_file_default():
    levels = [
        Level("model a", (Param("weight", 1.0, "q_proj"),)),
        Level("slice", (Param("weight", 2.0, "k_proj"),)),
        Level("target", (Param("weight", 3.0, "v_proj"),)),
        Level("file", (Param("weight", 4.0),)),
    ]
    assert resolve(W, levels, "l.q_proj", 0, {}) == 1.0
    assert resolve(W, levels, "l.k_proj", 0, {}) == 2.0
    assert resolve(W, levels, "l.v_proj", 0, {}) == 3.0
    assert resolve(W, levels, "l.o_proj", 0, {}) == 4.0
    d = ParamSpec("density", default=1.0, per_model=True)
    assert resolve(d, levels, "l.o_proj", 0, {}) == 1.0


def test_missing_required_and_base_exemption():
    with pytest.raises(ConfigError, match="missing required parameter 'weight'"):
        resolve(W, [Level("target", ())], "t", 0, {}, where="for model 'a'")
    assert resolve(W, [Level("target", ())], "t", 0, {}, required=False) is None


def test_variables_and_types():
    levels = [Level("target", (Param("weight", Sym("w")),))]
    assert resolve(W, levels, "t", 0, {"w": 0.25}) == 0.25
    with pytest.raises(ConfigError, match="must be a number"):
        resolve(W, [Level("target", (Param("weight", "abc"),))], "t", 0, {})
    b = ParamSpec("normalize", default=True, type=bool)
    with pytest.raises(ConfigError, match="true or false"):
        resolve(b, [Level("target", (Param("normalize", 1),))], "t", 0, {})
    assert resolve(ParamSpec("k", default=1, type=int), [Level("t", (Param("k", 3.0),))], "t", 0, {}) == 3


def test_gradient_through_resolve():
    levels = [Level("target", (Param("weight", (0.0, 1.0)),))]
    assert resolve(W, levels, "t", 0.5, {}) == 0.5
