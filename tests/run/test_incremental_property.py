"""Incremental = clean: after any sequence of edits, a rebuild equals a clean build, bit for bit."""

import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import assert_same_tensors, cli, mergefile_for, read_tensors

MODELS = ("a", "b", "c")
FILTERS = ("mlp", "self_attn", "layers.1.", "norm")


def render(s: dict) -> str:
    lines = [f"out/m: {s['method']}(base=base{', out_dtype=float16' if s['half'] else ''}) {{"]
    for name in s["inputs"]:
        w = s["weights"][name]
        lines.append(f"    {name} weight={w}")
    if s["filter"]:
        f, v = s["filter"]
        lines.append(f"    weight[{f}] = {v}")
    if s["gradient"]:
        lines.append(f"    {s['inputs'][0]} weight={list(s['gradient'])}".replace("(", "[").replace(")", "]"))
    lines.append("}")
    lines.append("out/f: passthrough {")
    for m, a, b in s["slices"]:
        lines.append(f"    slice {m}[{a}:{b}]")
    lines.append("}")
    lines.append("out/s: linear { out/m weight=1 ; c weight=0.5 }")
    lines.append("all: out/m out/f out/s")
    text = "\n".join(lines)
    # a gradient line repeats the model: keep only the last line for that model
    if s["gradient"]:
        first = s["inputs"][0]
        out, seen = [], False
        for line in reversed(text.splitlines()):
            if line.strip().startswith(first + " weight=") and seen:
                continue
            if line.strip().startswith(first + " weight="):
                seen = True
            out.append(line)
        text = "\n".join(reversed(out))
    return text


weights = st.sampled_from([0.25, 0.5, 1.0, 1.5])
edits = st.one_of(
    st.tuples(st.just("weight"), st.sampled_from(MODELS), weights),
    st.tuples(st.just("filter"), st.sampled_from(FILTERS), weights),
    st.tuples(st.just("nofilter"), st.none(), st.none()),
    st.tuples(st.just("gradient"), st.lists(weights, min_size=2, max_size=4).map(tuple), st.none()),
    st.tuples(st.just("swap"), st.sampled_from(MODELS), st.sampled_from(MODELS)),
    st.tuples(st.just("slice"), st.sampled_from(MODELS), st.integers(0, 3)),
    st.tuples(st.just("method"), st.sampled_from(["linear", "task_arithmetic"]), st.none()),
    st.tuples(st.just("half"), st.booleans(), st.none()),
)


def apply(s: dict, edit) -> None:
    kind, x, y = edit
    if kind == "weight":
        s["weights"][x] = y
    elif kind == "filter":
        s["filter"] = (x, y)
    elif kind == "nofilter":
        s["filter"] = None
    elif kind == "gradient":
        s["gradient"] = x
    elif kind == "swap" and x in s["inputs"] and y not in s["inputs"]:
        s["inputs"][s["inputs"].index(x)] = y
    elif kind == "slice":
        s["slices"] = (s["slices"] + [(x, y, 4)])[-3:]
    elif kind == "method":
        s["method"] = x
    elif kind == "half":
        s["half"] = x


def build_all(d: Path, models: dict, text: str, cache: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    mergefile_for(d, models, text)
    assert cli(d, "all", cache=cache) == 0


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(edits, min_size=1, max_size=4))
def test_random_edit_sequences_match_clean_builds(tiny_models, tmp_path_factory, seq):
    root = tmp_path_factory.mktemp("inc")
    state = {
        "method": "linear",
        "inputs": ["a", "b"],
        "weights": {"a": 1.0, "b": 0.5, "c": 0.25},
        "filter": None,
        "gradient": None,
        "slices": [("a", 0, 2), ("b", 2, 4)],
        "half": False,
    }
    inc, inc_cache = root / "inc", root / "inc-cache"
    build_all(inc, tiny_models, render(state), inc_cache)
    for i, edit in enumerate(seq):
        apply(state, edit)
        text = render(state)
        build_all(inc, tiny_models, text, inc_cache)
        clean, clean_cache = root / f"clean{i}", root / f"clean{i}-cache"
        build_all(clean, tiny_models, text, clean_cache)
        for t in ("out/m", "out/f", "out/s"):
            assert_same_tensors(read_tensors(inc / t), read_tensors(clean / t))
            assert (inc / t / "config.json").read_bytes() == (clean / t / "config.json").read_bytes()
            assert sorted(p.name for p in (inc / t).iterdir()) == sorted(p.name for p in (clean / t).iterdir())
        shutil.rmtree(clean)
        shutil.rmtree(clean_cache)
