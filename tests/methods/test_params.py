"""Parameter names, defaults, per-model flags and base rules exactly as mergekit (reference §1)."""

from __future__ import annotations

import pytest

from mergefile.methods import METHODS, REQUIRED, BaseRule

R = REQUIRED
GTA_GLOBAL = {"int8_mask": False, "lambda": 1.0}

# name -> (global params {name: default}, per-model params {name: default})
EXPECTED: dict[str, tuple[dict, dict]] = {
    "linear": ({"normalize": True}, {"weight": R}),
    "task_arithmetic": ({**GTA_GLOBAL, "normalize": False, "rescale": False}, {"weight": R, "density": 1.0}),
    "ties": ({**GTA_GLOBAL, "normalize": True, "rescale": False}, {"weight": R, "density": 1.0}),
    "dare_ties": ({**GTA_GLOBAL, "normalize": False, "rescale": True}, {"weight": R, "density": 1.0}),
    "dare_linear": ({**GTA_GLOBAL, "normalize": False, "rescale": True}, {"weight": R, "density": 1.0}),
    "breadcrumbs": ({**GTA_GLOBAL, "normalize": False, "rescale": False}, {"weight": R, "density": 1.0, "gamma": 0.01}),
    "breadcrumbs_ties": (
        {**GTA_GLOBAL, "normalize": False, "rescale": False},
        {"weight": R, "density": 1.0, "gamma": 0.01},
    ),
    "della": ({**GTA_GLOBAL, "normalize": True, "rescale": True}, {"weight": R, "density": 1.0, "epsilon": 0.15}),
    "della_linear": (
        {**GTA_GLOBAL, "normalize": False, "rescale": True},
        {"weight": R, "density": 1.0, "epsilon": 0.15},
    ),
    "slerp": ({"t": R}, {}),
    "nuslerp": ({"nuslerp_flatten": True, "nuslerp_row_wise": False}, {"weight": R}),
    "multislerp": ({"normalize_weights": True, "eps": 1e-8}, {"weight": R}),
    # weight is our addition (mergekit ignores weights); default 1 keeps mergekit's result
    "karcher": ({"max_iter": 10, "tol": 1e-5}, {"weight": 1.0}),
    "sce": ({"select_topk": 1.0, "int8_mask": False}, {}),
    "ram": ({"epsilon": 1e-5}, {}),
    "ramplus_tl": ({"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}, {}),
    "model_stock": ({"filter_wise": False}, {}),
    "nearswap": ({"t": R}, {}),
    "arcee_fusion": ({}, {}),
    "passthrough": ({}, {"scale": None}),
}

BASE = {
    BaseRule.REQUIRED: {
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "slerp",
        "sce",
        "ram",
        "ramplus_tl",
        "model_stock",
        "nearswap",
        "arcee_fusion",
    },
    BaseRule.OPTIONAL: {"nuslerp", "multislerp", "karcher"},
    BaseRule.IGNORED: {"linear", "passthrough"},
}

COUNTS = {
    "slerp": (2, 2),
    "nearswap": (2, 2),
    "arcee_fusion": (2, 2),
    "nuslerp": (2, 3),
    "model_stock": (3, None),
    "passthrough": (1, 1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_match_mergekit(name: str):
    m = METHODS[name]
    glob, per = EXPECTED[name]
    assert {p.name: p.default for p in m.global_params} == glob
    assert {p.name: p.default for p in m.model_params} == per


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_base_rule_and_counts(name: str):
    m = METHODS[name]
    assert name in BASE[m.base]
    if name in COUNTS:
        assert (m.min_models, m.max_models) == COUNTS[name]


def test_bool_and_int_params_are_typed():
    assert METHODS["ties"].param("normalize").type is bool
    assert METHODS["karcher"].param("max_iter").type is int
    assert METHODS["nuslerp"].param("nuslerp_flatten").type is bool
