"""Evolve without running a search: config front ends, genome -> recipe mapping, written recipes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mergefile.errors import ConfigError
from mergefile.syntax import parse_text
from mergefile.syntax.ast import Sym
from mergefile.targets.evolve.config import GenomeDef, check_benchmarks, load_genome_yaml
from mergefile.targets.evolve.genome import Genome, round6
from mergefile.targets.evolve.outputs import render_mergefile, render_mergekit
from mergefile.targets.evolve.scoring import ScoreSpec, combine
from mergefile.targets.evolve.target import config_from_target
from tests.helpers import REPO

SEED_GENOME = REPO / "tests" / "data" / "evolve_genome.yml"


def _genome(method="ties", models=("a", "b"), base="base", **kw) -> GenomeDef:
    return GenomeDef(
        models=tuple((m, Sym(m)) for m in models),
        merge_method=method,
        base_model=(base, Sym(base)) if base else None,
        **kw,
    )


def test_seed_genome_file_is_accepted_unchanged():
    cfg = load_genome_yaml(SEED_GENOME)
    g = cfg.genome
    assert [n for n, _ in g.models] == ["model_1", "model_2"]
    assert g.merge_method == "dare_ties" and g.base_model[0] == "base_model_if_needed"
    assert g.layer_granularity == 8 and g.normalize is False and g.filters == ("self_attn", "mlp")
    assert g.tokenizer_source is None and g.dtype == "bfloat16"  # mergekit-evolve merges in bfloat16
    assert [(t.name, t.weight, t.metric) for t in cfg.tasks] == [
        ("lm_eval_task_name", 1.0, "acc,none"),
        ("perplexity_task", -0.5, "word_perplexity,none"),
    ]
    assert cfg.limit == 100 and cfg.num_fewshot == 0 and cfg.shuffle and cfg.apply_chat_template is True
    # the models are named after their paths and declared for the planner
    assert {s.name for s in cfg.statements} == {"model_1", "model_2", "base_model_if_needed"}


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            "genome: {models: [a], merge_method: ties, base_model: b, layer_granularty: 2}\ntasks: [t]",
            "did you mean 'layer_granularity'",
        ),
        ("genome: {models: [a], merge_method: ties}\ntasks: [t]", "needs a base model"),
        (
            "genome: {models: [a, b], merge_method: slerp, smooth: true}\ntasks: [t]",
            "smooth is not supported for slerp",
        ),
        ("genome: {models: [a, b], merge_method: karcher}\ntasks: [t]", "unknown evolve merge method 'karcher'"),
        ("genome: {models: [a, b], merge_method: linear}\ntasks: []", "non-empty list"),
        ("genome: {models: [a, b], merge_method: linear}\ntasks: [{name: t, metrc: acc}]", "did you mean 'metric'"),
        ("genome: {models: [a, b], merge_method: linear}\n", "needs 'tasks:'"),
    ],
)
def test_bad_genome_files_are_located_errors(tmp_path, text, needle):
    path = tmp_path / "g.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")) as e:
        load_genome_yaml(path)
    assert str(path) in e.value.render()


def test_benchmark_tasks_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "g.yml"
    path.write_text("genome: {models: [a, b], merge_method: linear}\ntasks: [gsm8k, mytask, mmlu_train]")
    cfg = load_genome_yaml(path)
    with pytest.raises(ConfigError, match="gsm8k"):
        check_benchmarks(cfg, allow=False)
    assert len(check_benchmarks(cfg, allow=True)) == 1  # mmlu_train: a training split, fine


def test_genotype_shape_and_initial_point():
    g = Genome(_genome(filters=("self_attn", "mlp"), layer_granularity=2), num_layers=4)
    assert g.shape == (2, 2, 3, 2) and g.size == 24
    x = g.initial().reshape(g.shape)
    assert np.all(x[..., 0] == 0.5) and np.all(x[..., 1] == 1.0)  # weight 1/N, density 1
    rnd = g.initial(np.random.default_rng(0))
    assert rnd.shape == (24,) and np.all((rnd >= 0) & (rnd < 1))
    with pytest.raises(ConfigError, match="does not divide"):
        Genome(_genome(layer_granularity=3), num_layers=4)


def test_discrete_mapping_slices_filters_abs_and_clamp():
    g = Genome(_genome(filters=("self_attn",), layer_granularity=2), num_layers=4)
    x = np.zeros(g.shape)
    x[0, 0, 0, 0], x[0, 0, 1, 0] = -0.3, 0.7  # model a, group 0: weight[self_attn], weight
    x[0, 0, 1, 1] = 1.7  # density above 1 -> 1
    x[1, 1, 1, 1] = -0.25  # density -> |x|
    t = g.target(x.reshape(-1), "cand")
    assert t.method == "ties" and len(t.slices) == 2 and not t.sources
    s0 = t.slices[0]
    assert [s.ref.name for s in s0.sources] == ["a", "b", "base"] and s0.sources[0].layers == (0, 2)
    assert t.slices[1].sources[0].layers == (2, 4)
    a = {(p.name, p.filter): p.value for p in s0.sources[0].params}
    assert a[("weight", "self_attn")] == 0.3 and a[("weight", None)] == 0.7 and a[("density", None)] == 1.0
    b1 = {(p.name, p.filter): p.value for p in t.slices[1].sources[1].params}
    assert b1[("density", None)] == 0.25
    assert s0.sources[2].params == ()  # the base carries no genome parameters
    settings = {p.name: p.value for p in t.params}
    assert settings["base"] == Sym("base") and settings["normalize"] is True and settings["int8_mask"] is True
    assert settings["dtype"] == Sym("bfloat16")


def test_negative_weights_when_allowed_and_normalize_default():
    g = Genome(_genome(method="task_arithmetic", allow_negative_weights=True, normalize=None), num_layers=4)
    x = np.full(g.size, -0.5)
    t = g.target(x, "cand")
    assert {p.value for s in t.slices[0].sources[:2] for p in s.params} == {-0.5}
    assert {p.name: p.value for p in t.params}["normalize"] is False  # mergekit: only ties/dare_ties/linear


def test_smooth_mapping_is_gradients_over_whole_models():
    g = Genome(_genome(method="linear", base=None, smooth=True, layer_granularity=1), num_layers=4)
    x = np.arange(1, 9, dtype=float) / 10  # [groups=4, models=2, 1, 1]
    t = g.target(x, "cand")
    assert not t.slices and [s.ref.name for s in t.sources] == ["a", "b"]
    assert t.sources[0].params[0].value == (0.1, 0.3, 0.5, 0.7)
    assert t.sources[1].params[0].value == (0.2, 0.4, 0.6, 0.8)


def test_slerp_takes_the_top_two_and_softmax_t():
    g = Genome(_genome(method="slerp", models=("a", "b", "c"), base=None, layer_granularity=2), num_layers=4)
    x = np.zeros(g.shape)
    x[0, :, 0, 0] = [0.1, 0.9, 0.5]  # group 0: b then c
    x[1, :, 0, 0] = [0.8, -1.0, 0.2]  # group 1: a then c
    t = g.target(x.reshape(-1), "cand")
    s0, s1 = t.slices
    assert [s.ref.name for s in s0.sources] == ["b", "c"] and [s.ref.name for s in s1.sources] == ["a", "c"]
    p0 = {p.name: p.value for p in s0.params}
    assert p0["base"] == Sym("b") and p0["t"] == round6(np.exp(0.5) / (np.exp(0.9) + np.exp(0.5)))


def test_values_are_rounded_before_the_recipe():
    assert round6(0.123456789) == 0.123457 and round6(-0.0) == 0.0 and round6(1e-9) == 1e-9


def test_best_recipe_round_trips_through_the_parser(tmp_path):
    cfg = load_genome_yaml(SEED_GENOME)
    g = Genome(cfg.genome, num_layers=16)
    x = np.random.default_rng(3).normal(size=g.size)
    t = g.target(x, "final_model")
    text = render_mergefile(cfg, t, ["a header"])
    assert text.startswith("# a header\nmodel model_1 = ")
    parsed = parse_text(text, str(tmp_path / "best.mf")).targets()["final_model"]
    assert parsed == t  # same AST: same keys, same model
    yaml_text = render_mergekit(cfg, t)
    import yaml

    doc = yaml.safe_load(yaml_text)
    assert doc["merge_method"] == "dare_ties" and len(doc["slices"]) == 2
    weight = doc["slices"][0]["sources"][0]["parameters"]["weight"]
    assert [w["filter"] for w in weight] == ["self_attn", "mlp", None]
    assert doc["parameters"] == {"normalize": False, "int8_mask": True}


def test_objective_combines_weighted_metrics():
    from mergefile.targets.evolve.config import TaskSpec

    tasks = (TaskSpec("x", 1.0), TaskSpec("ppl", -0.5, "word_perplexity,none"))
    assert combine(tasks, {"x": {"acc,none": 0.5}, "ppl": {"word_perplexity,none": 3.0}}) == -1.0
    with pytest.raises(ConfigError, match="no metric 'acc_norm,none'"):
        combine((TaskSpec("x", 1.0, "acc_norm,none"),), {"x": {"acc,none": 0.5}})


def test_score_key_ignores_weights_but_not_settings():
    from mergefile.targets.evolve.config import TaskSpec

    a = ScoreSpec((TaskSpec("x", 1.0),)).key_payload()
    assert a == ScoreSpec((TaskSpec("x", 2.0),)).key_payload()
    assert a != ScoreSpec((TaskSpec("x", 1.0),), limit=5).key_payload()


MF = """
model base = "{base}"
model a = "{a}"
out/best: evolve(ties, base=base, models=[a, "{b}"]) {{
    layer_granularity = 2
    budget = 12
    filters = [self_attn, mlp]
    task_path = "tasks"
    evolve_tiny weight=2 metric="acc_norm,none"
    other
}}
"""


def test_mergefile_evolve_target_front_end(tmp_path):
    mf = parse_text(MF.format(base="/m/base", a="/m/a", b="/m/b"), str(tmp_path / "Mergefile"))
    cfg, run = config_from_target(mf.targets()["out/best"], mf)
    g = cfg.genome
    assert g.merge_method == "ties" and [n for n, _ in g.models] == ["a", "evolve_b"]
    assert g.base_model[0] == "base" and g.filters == ("self_attn", "mlp") and g.layer_granularity == 2
    assert [(t.name, t.weight, t.metric) for t in cfg.tasks] == [
        ("evolve_tiny", 2.0, "acc_norm,none"),
        ("other", 1.0, "acc,none"),
    ]
    assert run["max_fevals"] == 12 and run["task_search_path"] == (str(tmp_path / "tasks"),)
    assert not any(getattr(s, "method", None) == "evolve" for s in cfg.statements)


@pytest.mark.parametrize(
    "body, needle",
    [
        ("evolve(ties, base=base, models=[a]) { budgett = 3 ; t }", "did you mean 'budget'"),
        ("evolve(base=base, models=[a]) { t }", "needs a merge method"),
        ("evolve(tie, base=base, models=[a]) { t }", "did you mean 'ties'"),
        ("evolve(ties, base=base) { t }", "needs models="),
        ("evolve(ties, base=base, models=[a]) { t wieght=2 }", "did you mean 'weight'"),
        ("evolve(ties, models=[a]) { t }", "needs a base model"),
    ],
)
def test_mergefile_evolve_target_errors(tmp_path, body, needle):
    mf = parse_text(f'model base = "/m/base"\nmodel a = "/m/a"\nout/x: {body}\n', str(tmp_path / "Mergefile"))
    with pytest.raises(ConfigError, match=needle):
        config_from_target(mf.targets()["out/x"], mf)


def test_evolve_modules_import_nothing_heavy():
    code = (
        "import sys\n"
        "import mergefile.cli.evolve_cmd\n"
        "from mergefile.targets.evolve import config, genome, candidates, scoring, worker, strategies, search, outputs, target\n"
        "heavy = [m for m in ('torch', 'lm_eval', 'ray', 'cma', 'transformers', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_candidate_key_is_the_content(tmp_path):
    """Genotypes that give the same weights (|x|) are one candidate; different weights are not."""
    from mergefile.store.store import Store
    from mergefile.targets.evolve.candidates import build_options, plan_candidate
    from tests.targets.evolve_support import make_evolve_models, write_genome

    models = make_evolve_models(tmp_path / "m")
    cfg = load_genome_yaml(write_genome(tmp_path / "g.yml", models))
    g = Genome(cfg.genome, 4)
    x = g.initial()
    with Store(tmp_path / "cache") as store:
        opts = build_options()
        k1 = plan_candidate(cfg, g.target(x, "c1"), store, opts).key
        k2 = plan_candidate(cfg, g.target(-x, str(tmp_path / "other")), store, opts).key
        k3 = plan_candidate(cfg, g.target(x * 1.5, "c3"), store, opts).key
    assert k1 == k2 != k3
