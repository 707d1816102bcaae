"""Every registered method, built end to end by the CLI on the tiny models (issue 3).

Each output loads and runs in transformers; a few equal the pure method functions bit for bit;
every method is deterministic across fresh builds and ``-j``, free of NaN in half precision;
sparsified task vectors are cached stages; random methods are seeded per node. Whole-recipe
builds are shared by module-scoped fixtures, so each variant is built once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from mergefile.methods import METHODS, MergeContext, Method, get_method, run_method
from mergefile.methods.apply import stage_params, with_defaults
from mergefile.run.compute import KeyedStages
from mergefile.run.plan_keys import stage_key
from mergefile.store.keys import seed_from_key
from mergefile.store.log import BuildLog
from mergefile.store.manifest import read_manifest
from mergefile.store.store import Store
from tests.helpers import cli, cli_json, mergefile_for, read_tensors, shard_bytes

# One valid recipe per method, on base, a, b only (the bf16 family has no c).
RECIPES: dict[str, str] = {
    "linear": "linear { a weight=0.6 ; b weight=0.4 }",
    "task_arithmetic": "task_arithmetic(base=base) { a weight=0.7 ; b weight=0.5 }",
    "ties": "ties(base=base) { a weight=0.7 density=0.5 ; b weight=0.5 density=0.4 }",
    "dare_ties": "dare_ties(base=base) { a weight=0.7 density=0.5 ; b weight=0.5 density=0.4 }",
    "dare_linear": "dare_linear(base=base) { a weight=0.7 density=0.5 ; b weight=0.5 density=0.4 }",
    "breadcrumbs": "breadcrumbs(base=base) { a weight=0.7 density=0.8 gamma=0.05 ; b weight=0.5 density=0.7 }",
    "breadcrumbs_ties": "breadcrumbs_ties(base=base) { a weight=0.7 density=0.8 gamma=0.05 ; b weight=0.5 density=0.7 }",
    "della": "della(base=base) { a weight=0.7 density=0.5 epsilon=0.1 ; b weight=0.5 density=0.4 }",
    "della_linear": "della_linear(base=base) { a weight=0.7 density=0.5 epsilon=0.1 ; b weight=0.5 density=0.4 }",
    "slerp": "slerp(base=base, t=[0, 0.5, 1]) { a }",
    "nuslerp": "nuslerp(base=base) { a weight=0.6 ; b weight=0.4 }",
    "multislerp": "multislerp(base=base) { a weight=1 ; b weight=2 }",
    "karcher": "karcher { a ; b weight=2 }",
    "sce": "sce(base=base, select_topk=0.5) { a ; b }",
    "ram": "ram(base=base) { a ; b }",
    "ramplus_tl": "ramplus_tl(base=base) { a ; b }",
    # independent fine-tunes have cosine ~0 (model_stock returns the base): average a with a blend of a
    "model_stock": "model_stock(base=base) { a ; out/linear }",
    "nearswap": "nearswap(base=base, t=0.01) { a }",
    "arcee_fusion": "arcee_fusion(base=base) { a }",
    "passthrough": "passthrough { slice a[0:2] ; slice b[2:4] }",
    # mergebuild extensions (issue 19; more in tests/run/test_new_methods_e2e.py)
    "tsv": "tsv(base=base) { a weight=0.7 ; b weight=0.5 }",
    "iso_c": "iso_c(base=base, alpha=0.8) { a ; b }",
    "iso_cts": "iso_cts(base=base) { a ; b }",
    "consensus_ta": "consensus_ta(base=base, k=1) { a weight=0.7 ; b weight=0.5 }",
    "consensus_ties": "consensus_ties(base=base) { a density=0.5 ; b density=0.4 }",
    "magmax": "magmax(base=base) { a ; b }",
    "pcb": "pcb(base=base, pcb_ratio=0.2) { a weight=1.2 ; b }",
    "wudi": "wudi(base=base, iterations=50) { a ; b }",
}
NAMES = sorted(RECIPES)
LAYER = "model.layers.1.mlp.down_proj.weight"
NORM = "model.layers.1.input_layernorm.weight"


def _is_random(m: Method) -> bool:
    return m.random or (m.stage is not None and m.stage.random)


RANDOM = sorted(n for n, m in METHODS.items() if _is_random(m))


def _three(models: Mapping[str, Path]) -> dict[str, Path]:
    return {k: models[k] for k in ("base", "a", "b")}


def _build_all(root: Path, models: Mapping[str, Path], header: str = "", jobs: int = 1) -> Path:
    """Every recipe as a target of one Mergefile, built by the CLI in a fresh dir and cache."""
    root.mkdir(parents=True)
    body = "\n".join(f"out/{m}: {r}" for m, r in RECIPES.items())
    mergefile_for(root, _three(models), f"{header}\n{body}\nall: {' '.join(f'out/{m}' for m in RECIPES)}")
    assert cli(root, "-j", str(jobs), "all", cache=root / "cache") == 0
    return root


@pytest.fixture(scope="module")
def main_build(tiny_models, tmp_path_factory) -> Path:
    return _build_all(tmp_path_factory.mktemp("e2e") / "main", tiny_models)


@pytest.fixture(scope="module")
def again_build(tiny_models, tmp_path_factory) -> Path:
    return _build_all(tmp_path_factory.mktemp("e2e") / "again", tiny_models)


@pytest.fixture(scope="module")
def j4_build(tiny_models, tmp_path_factory) -> Path:
    return _build_all(tmp_path_factory.mktemp("e2e") / "j4", tiny_models, jobs=4)


@pytest.fixture(scope="module")
def fp16_build(tiny_models, tmp_path_factory) -> Path:
    """fp32 inputs computed in float16 (``dtype``), written as float32 (``out_dtype``)."""
    return _build_all(tmp_path_factory.mktemp("e2e") / "fp16", tiny_models, "dtype = float16\nout_dtype = float32")


@pytest.fixture(scope="module")
def bf16_build(tiny_models_bf16, tmp_path_factory) -> Path:
    return _build_all(tmp_path_factory.mktemp("e2e") / "bf16", tiny_models_bf16, jobs=2)


def test_every_registered_method_has_a_recipe():
    assert set(RECIPES) == set(METHODS)


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_output_loads_and_runs_in_transformers(name, main_build, tiny_models):
    from transformers import AutoModelForCausalLM

    out = main_build / "out" / name
    tensors, base = read_tensors(out), read_tensors(tiny_models["base"])
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in base.items()}
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 20, 40]])).logits
    assert logits.shape == (1, 5, 128)
    assert torch.isfinite(logits).all()


def _recipe_of(out: Path, tensor: str) -> tuple[str, dict[str, Any]]:
    entry = read_manifest(out).tensors[tensor]
    return entry["key"], entry["recipe"]


def _inputs(models: Mapping[str, Path], rec: Mapping[str, Any]) -> list[torch.Tensor]:
    return [read_tensors(models[label])[name] for label, name in zip(rec["models"], rec["tensors"])]


def _expected(method: Method, tensors, per_model, params, rec, key: str, tensor: str) -> torch.Tensor:
    """The one way to run a method (``run_method``), seeded as the build seeds it: each stage by
    its own key (recipe seed 0, no ``dtype`` setting), the merge by the tensor's key."""
    models, glob = with_defaults(method, per_model, params, rec["base_index"])
    b, keys = rec["base_index"], rec["inputs"]
    stages = None
    if method.stage is not None:
        stages = KeyedStages(
            {
                i: stage_key(method, stage_params(method, models[i], glob), keys[i], keys[b], None, 0)
                for i in range(len(tensors))
                if i != b
            },
            0,
        )
    gen = torch.Generator().manual_seed(seed_from_key(key, 0))
    return run_method(method, list(tensors), models, glob, MergeContext(tensor, False, b, gen), stages)


# method -> (input order in the recipe, per-model params, global params), written out by hand
PURE = {
    "ties": (["a", "b", "base"], [{"weight": 0.7, "density": 0.5}, {"weight": 0.5, "density": 0.4}, {}], {}),
    "dare_ties": (["a", "b", "base"], [{"weight": 0.7, "density": 0.5}, {"weight": 0.5, "density": 0.4}, {}], {}),
    "slerp": (["a", "base"], [{}, {}], {}),  # t: from the layer gradient, checked below
    "model_stock": (["a", "out/linear", "base"], [{}, {}, {}], {}),
}


@pytest.mark.parametrize("name", sorted(PURE))
@pytest.mark.parametrize("tensor", [LAYER, NORM])
def test_build_equals_the_pure_function(name, tensor, main_build, tiny_models):
    order, per_model, params = PURE[name]
    key, rec = _recipe_of(main_build / "out" / name, tensor)
    assert rec["models"] == order and rec["base_index"] == len(order) - 1
    if name == "slerp":  # layer 1 of 4 on the gradient [0, 0.5, 1]: t = 1/3
        assert rec["params"]["t"] == pytest.approx(1 / 3)
        params = {"t": rec["params"]["t"]}
    tensors = _inputs({**tiny_models, "out/linear": main_build / "out/linear"}, rec)
    method = get_method(name)
    expected = _expected(method, tensors, per_model, params, rec, key, tensor)
    got = read_tensors(main_build / "out" / name)[tensor]
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert not torch.equal(got, tensors[-1])  # the merge did something


# -- contract at build level -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fresh_builds_and_jobs_give_identical_files(name, main_build, again_build, j4_build):
    first = shard_bytes(main_build / "out" / name)
    assert first and shard_bytes(again_build / "out" / name) == first
    assert shard_bytes(j4_build / "out" / name) == first


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_gives_no_nan(name, fp16_build, bf16_build):
    for build, dtype in ((fp16_build, torch.float32), (bf16_build, torch.bfloat16)):
        tensors = read_tensors(build / "out" / name)
        assert len(tensors) == 39
        for k, v in tensors.items():
            assert v.dtype == dtype, k
            assert torch.isfinite(v).all(), (name, k)


# -- errors before any tensor is read --------------------------------------------------------


@pytest.fixture
def no_reads(monkeypatch):
    from mergefile.io import reader

    monkeypatch.setattr(reader.TensorReader, "get", lambda *a, **k: pytest.fail("a tensor was read"))


@pytest.mark.parametrize(
    "body, words",
    [
        ("slerp(base=base, t=0.5) { a ; b }", ["slerp needs exactly 2 input models", "got 3"]),
        (
            "della(base=base) { a weight=1 density=0.9 ; b weight=1 }",
            ["della, model 'a'", "density ± epsilon", "epsilon=0.15", "tensor 'model.embed_tokens.weight'"],
        ),
        (
            "della_linear(base=base, epsilon=0.3) { a weight=1 density=0.5 ; b weight=1 density=0.2 }",
            ["model 'b'", "density=0.2, epsilon=0.3"],
        ),
        ("ties(base=base) { a weight=1 density=-0.5 ; b weight=1 }", ["ties, model 'a'", "density must be >= 0"]),
        ("breadcrumbs(base=base) { a weight=1 density=0.5 gamma=-1 ; b weight=1 }", ["gamma must be >= 0"]),
        (
            "ties(base=base) { a weight=1 ; b density=0.5 }",
            ["missing required parameter 'weight'", "model 'b'", "tensor 'model.embed_tokens.weight'"],
        ),
        ("slerp(base=base) { a }", ["missing required parameter 't'", "target 'out/x'"]),
        ("tis(base=base) { a weight=1 ; b weight=1 }", ["did you mean 'ties'"]),
        ("linear { a weight=1 ; b weight=-1 }", ["linear", "sum to 0"]),
        ("karcher { a weight=-1 ; b }", ["karcher, model 'a'", "weights must be >= 0"]),
    ],
)
def test_bad_recipe_fails_cleanly_before_reading(body, words, tiny_models, tmp_path, capsys, no_reads):
    d, cache = tmp_path / "w", tmp_path / "cache"
    d.mkdir()
    mergefile_for(d, _three(tiny_models), f"out/x: {body}")
    capsys.readouterr()
    assert cli(d, cache=cache) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("mergebuild: error: ")
    assert "Mergefile:" in err or "did you mean" in err  # located at the recipe line
    for w in words:
        assert w in err, (w, err)
    assert not (d / "out").exists()
    with Store(cache) as store:
        assert len(store.blobs) == 0
        assert store.log.runs() == []


@pytest.mark.parametrize(
    "body",
    [
        "della(base=base) { a weight=1 density=1 ; b weight=1 density=0 }",  # keep all / drop all
        "della(base=base, density=0.9, epsilon=0.05) { a weight=1 ; b weight=1 }",
        "slerp(base=base, t=1.5) { a }",  # mergekit does not limit t: neither do we
    ],
)
def test_edge_values_are_accepted(body, tiny_models, tmp_path, capsys):
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, _three(tiny_models), f"out/x: {body}")
    assert cli_json(d, "-n", cache=tmp_path / "cache", capsys=capsys)["exit"] == 0


# -- cacheable stages ------------------------------------------------------------------------

STAGED = {
    "ties": "",
    "dare_ties": "",
    "della": " epsilon=0.1",
    "breadcrumbs": " gamma=0.05",
}


def _staged_recipe(name: str, w_a: float, d_a: float) -> str:
    x = STAGED[name]
    return f"out/x: {name}(base=base) {{ a weight={w_a} density={d_a}{x} ; b weight=0.5 density=0.4{x} }}"


def _clean(tmp: Path, models, body: str) -> dict[str, torch.Tensor]:
    tmp.mkdir()
    mergefile_for(tmp, models, body)
    assert cli(tmp, cache=tmp / "cache") == 0
    return read_tensors(tmp / "out/x")


def _log_totals(cache: Path) -> tuple[int, int, dict]:
    records = BuildLog(cache / "logs").read()
    rows = [r for r in records if r.get("status") == "computed"]
    summary = next(r for r in records if r.get("summary"))
    return sum(r["stage_hits"] for r in rows), sum(r["stage_misses"] for r in rows), summary


@pytest.mark.parametrize("name", sorted(STAGED))
def test_weight_edit_reuses_every_stage_density_edit_only_its_model(name, tiny_models, tmp_path, capsys):
    models = _three(tiny_models)
    d, cache = tmp_path / "w", tmp_path / "cache"
    d.mkdir()
    mf = mergefile_for(d, models, _staged_recipe(name, 0.7, 0.5))
    r = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    n = r["computed"]
    assert n == 39 and (r["stage_misses"], r["stage_hits"]) == (2 * n, 0)

    mf.write_text(mf.read_text().replace("a weight=0.7", "a weight=0.3"))
    r = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    assert r["computed"] == n and r["stage_misses"] == 0 and r["stage_hits"] == 2 * n
    hits, misses, summary = _log_totals(cache)
    assert (hits, misses) == (2 * n, 0) and (summary["stage_hits"], summary["stage_misses"]) == (2 * n, 0)
    after_weight = read_tensors(d / "out/x")  # compared with a clean build below

    mf.write_text(mf.read_text().replace("a weight=0.3 density=0.5", "a weight=0.3 density=0.6"))
    r = cli_json(d, cache=cache, capsys=capsys)["targets"][0]
    assert r["computed"] == n and r["stage_misses"] == n and r["stage_hits"] == n
    assert _log_totals(cache)[:2] == (n, n)

    _assert_equal(after_weight, _clean(tmp_path / "c1", models, _staged_recipe(name, 0.3, 0.5)))
    _assert_equal(read_tensors(d / "out/x"), _clean(tmp_path / "c2", models, _staged_recipe(name, 0.3, 0.6)))


def _assert_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# -- randomness ------------------------------------------------------------------------------


@pytest.fixture
def sampled_fusion(monkeypatch):
    """Arcee Fusion samples only above 1e6 entries: lower the bar so the tiny tensors are sampled."""
    from mergefile.methods import arcee_fusion

    monkeypatch.setattr(arcee_fusion, "SAMPLE_SIZE", 100)


def _pair(name: str) -> str:
    """Two targets sharing most tensors: y differs from x only in layer 3 (or lacks layers 2-3)."""
    if name == "arcee_fusion":
        return "out/x: arcee_fusion(base=base) { a }\nout/y: arcee_fusion(base=base) { slice { a[0:2] ; base[0:2] } }"
    x = STAGED.get(name, "")
    return (
        f"out/x: {name}(base=base) {{ a weight=0.7 density=0.5{x} ; b weight=0.5 density=0.4{x} }}\n"
        f'out/y: {name}(base=base) {{ a weight=0.7 density=0.5 density["layers.3."]=0.3{x} ; b weight=0.5 density=0.4{x} }}'
    )


@pytest.mark.parametrize("name", ["dare_ties", "della", "arcee_fusion"])
def test_random_result_does_not_depend_on_other_tensors(name, tiny_models, tmp_path, sampled_fusion):
    models = _three(tiny_models)
    d = tmp_path / "w"
    d.mkdir()
    mergefile_for(d, models, _pair(name))
    assert cli(d, "out/x", cache=tmp_path / "c1") == 0
    assert cli(d, "-j", "4", "out/y", cache=tmp_path / "c2") == 0  # separate cache: nothing shared
    x, y = read_tensors(d / "out/x"), read_tensors(d / "out/y")
    shared = [k for k in y if ".layers.3." not in k and k in x]
    assert len(shared) >= 21
    for k in shared:
        assert torch.equal(x[k], y[k]), k
    if name != "arcee_fusion":
        assert any(not torch.equal(x[k], y[k]) for k in y if ".layers.3." in k)
    again = tmp_path / "again"
    again.mkdir()
    mergefile_for(again, models, _pair(name))
    assert cli(again, "out/x", cache=tmp_path / "c3") == 0
    assert shard_bytes(again / "out/x") == shard_bytes(d / "out/x")


@pytest.mark.parametrize("name", RANDOM)
def test_seed_changes_random_output(name, tiny_models, tmp_path, sampled_fusion):
    outs = []
    for seed in (0, 7):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        mergefile_for(d, _three(tiny_models), f"seed = {seed}\nout/x: {RECIPES[name]}")
        assert cli(d, cache=d / "cache") == 0
        outs.append(read_tensors(d / "out/x"))
    assert any(not torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_seed_enters_only_random_keys(main_build, capsys):
    text = (main_build / "Mergefile").read_text()
    (main_build / "Mergefile.seed").write_text("seed = 7\n" + text)
    r = cli_json(main_build, "-f", "Mergefile.seed", "-n", "all", cache=main_build / "cache", capsys=capsys)
    stale = {t["target"].removeprefix("out/"): len(t["stale"]) for t in r["targets"]}
    assert set(stale) == set(NAMES)
    for name, n in stale.items():
        assert n == (39 if name in RANDOM else 0), name
