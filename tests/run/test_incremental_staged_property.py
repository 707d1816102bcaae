"""Incremental = clean for staged bf16 methods under the cache policy of docs/cache.md.

A cold bf16 TIES/DARE build caches each model's keep-mask and not the final tensor; a rebuild
then makes final tensors again from masks, copies unchanged ones from the current output, or
selects again where a density moved. Whatever sequence of weight, density, per-tensor weight
and method edits (and deleted outputs) comes, the rebuilt folder equals a clean build bit for bit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import assert_same_tensors, cli, mergefile_for, read_tensors

METHODS = ("ties", "dare_ties", "breadcrumbs_ties", "della")
EXTRA = {"breadcrumbs_ties": " gamma=0.05", "della": " epsilon=0.1"}


def render(s: dict) -> str:
    extra = EXTRA.get(s["method"], "")
    lines = [f"out/x: {s['method']}(base=base) {{"]
    for name in ("a", "b"):
        lines.append(f"    {name} weight={s['weight'][name]} density={s['density'][name]}{extra}")
    if s["filter"]:
        f, v = s["filter"]
        lines.append(f"    weight[{f}] = {v}")
    lines.append("}")
    return "\n".join(lines)


values = st.sampled_from([0.25, 0.5, 0.75, 1.0])
edits = st.one_of(
    st.tuples(st.just("weight"), st.sampled_from("ab"), values),
    st.tuples(st.just("density"), st.sampled_from("ab"), values),
    st.tuples(st.just("filter"), st.sampled_from(["mlp", "layers.1.", "self_attn"]), values),
    st.tuples(st.just("nofilter"), st.none(), st.none()),
    st.tuples(st.just("method"), st.sampled_from(METHODS), st.none()),
    st.tuples(st.just("delete_output"), st.none(), st.none()),
)


def apply(s: dict, edit, out: Path) -> None:
    kind, x, y = edit
    if kind in ("weight", "density"):
        s[kind][x] = y
    elif kind == "filter":
        s["filter"] = (x, y)
    elif kind == "nofilter":
        s["filter"] = None
    elif kind == "method":
        s["method"] = x
    elif kind == "delete_output":
        shutil.rmtree(out, ignore_errors=True)


def build(d: Path, models: dict, text: str, cache: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    mergefile_for(d, models, text)
    assert cli(d, "out/x", cache=cache) == 0


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(METHODS), st.lists(edits, min_size=2, max_size=5))
def test_staged_edit_sequences_match_clean_builds(tiny_models_bf16, tmp_path_factory, method, seq):
    root = tmp_path_factory.mktemp("inc-staged")
    state = {"method": method, "weight": {"a": 0.7, "b": 0.5}, "density": {"a": 0.5, "b": 0.4}, "filter": None}
    inc, inc_cache = root / "inc", root / "inc-cache"
    build(inc, tiny_models_bf16, render(state), inc_cache)
    for i, edit in enumerate(seq):
        apply(state, edit, inc / "out" / "x")
        text = render(state)
        build(inc, tiny_models_bf16, text, inc_cache)
        clean, clean_cache = root / f"clean{i}", root / f"clean{i}-cache"
        build(clean, tiny_models_bf16, text, clean_cache)
        assert_same_tensors(read_tensors(inc / "out" / "x"), read_tensors(clean / "out" / "x"))
        shutil.rmtree(clean)
        shutil.rmtree(clean_cache)
