"""The planner: parameters per tensor, slices, validation before any tensor is read."""

from pathlib import Path

import pytest

from mergefile.errors import ConfigError, UserError
from mergefile.plan.graph import build_graph, build_order
from mergefile.plan.planner import Planner
from mergefile.syntax import parse_text


def plan(tmp_path: Path, models: dict, body: str, target: str):
    decls = "\n".join(f'model {n} = "{p}"' for n, p in models.items())
    mf = parse_text(decls + "\n" + body, str(tmp_path / "Mergefile"))
    build_graph(mf)
    return Planner(mf).plan(target)


@pytest.fixture(autouse=True)
def no_tensor_reads(monkeypatch):
    """Planning must never read tensor data."""
    from mergefile.io import reader

    def boom(*a, **k):
        raise AssertionError("planning read tensor data")

    monkeypatch.setattr(reader.TensorReader, "get", boom)


def params_of(p, name):
    job = next(j for j in p.jobs if j.name == name)
    return dict(job.params), [dict(x) for x in job.per_model], job


def test_precedence_filters_and_gradients(tiny_models, tmp_path):
    body = """
weight = 0.9
out/x: task_arithmetic(base=base) {
    a weight=0.5 weight[mlp]=0.25
    b
    weight[self_attn] = [0.0, 0.3]
    lambda = 0.5
}
"""
    p = plan(tmp_path, tiny_models, body, "out/x")
    g, pm, job = params_of(p, "model.layers.0.mlp.up_proj.weight")
    assert g["lambda"] == 0.5
    assert pm[0]["weight"] == 0.25  # source filtered
    assert pm[1]["weight"] == 0.9  # file default
    assert pm[2]["weight"] == 0.9  # the base inherits file defaults (mergekit: top level applies to all)
    assert job.base_index == 2
    # self_attn gradient over 4 layers at target level: layer 3 -> t=1 -> 0.3; b inherits it
    _, pm, _ = params_of(p, "model.layers.3.self_attn.q_proj.weight")
    assert pm[0]["weight"] == 0.5 and pm[1]["weight"] == pytest.approx(0.3)
    _, pm, _ = params_of(p, "model.layers.1.self_attn.q_proj.weight")
    assert pm[1]["weight"] == pytest.approx(0.1)
    _, pm, _ = params_of(p, "model.embed_tokens.weight")
    assert pm[1]["weight"] == 0.9  # no filter matches an embedding: the file default


def test_base_per_model_params_may_stay_unset(tiny_models, tmp_path):
    p = plan(tmp_path, tiny_models, "out/x: task_arithmetic(base=base) { a weight=1 }", "out/x")
    _, pm, job = params_of(p, "model.norm.weight")
    assert job.base_index == 1 and pm[1]["weight"] is None


def test_gradient_on_pre_layer_tensors_is_t0(tiny_models, tmp_path):
    p = plan(tmp_path, tiny_models, "out/x: linear { a weight=[0.2, 1.0] ; b weight=1 }", "out/x")
    _, pm, _ = params_of(p, "model.embed_tokens.weight")
    assert pm[0]["weight"] == pytest.approx(0.2)
    _, pm, _ = params_of(p, "model.layers.3.mlp.up_proj.weight")
    assert pm[0]["weight"] == pytest.approx(1.0)
    _, pm, _ = params_of(p, "model.layers.1.mlp.up_proj.weight")
    assert pm[0]["weight"] == pytest.approx(0.2 + 0.8 / 3)


def test_frankenmerge_renumbers_and_rewrites_config(tiny_models, tmp_path):
    body = """
out/f: passthrough {
    slice a[0:3]
    slice b[1:4] scale=0.5
}
"""
    p = plan(tmp_path, tiny_models, body, "out/f")
    assert p.num_layers == 6
    assert p.config["num_hidden_layers"] == 6
    job = next(j for j in p.jobs if j.name == "model.layers.4.mlp.up_proj.weight")
    assert job.inputs[0].tensor == "model.layers.2.mlp.up_proj.weight"
    assert p.inputs[job.inputs[0].model].label == "b"
    assert dict(job.per_model[0])["scale"] == 0.5
    first = next(j for j in p.jobs if j.name == "model.embed_tokens.weight")
    assert p.inputs[first.inputs[0].model].label == "a"
    last = next(j for j in p.jobs if j.name == "model.norm.weight")
    assert p.inputs[last.inputs[0].model].label == "b"
    assert len(set(p.shard_names.values())) == 8  # pre + 6 layers + post


def test_multi_stage_plans_upstream_without_reading(tiny_models, tmp_path):
    body = """
out/a: linear { a weight=1 ; b weight=1 }
out/b: linear { out/a weight=1 ; c weight=1 }
"""
    decls = "\n".join(f'model {n} = "{p}"' for n, p in tiny_models.items())
    mf = parse_text(decls + "\n" + body, str(tmp_path / "Mergefile"))
    g = build_graph(mf)
    assert build_order(mf, g, ["out/b"]) == ["out/a", "out/b"]
    p = Planner(mf).plan("out/b")
    assert p.inputs[0].target == "out/a"


@pytest.mark.parametrize(
    "body, target, message",
    [
        ("out/x: lineer { a weight=1 }", "out/x", "did you mean 'linear'"),
        ("out/x: linear { a wieght=1 }", "out/x", "did you mean 'weight'"),
        ("out/x: linear { a ; b weight=1 }", "out/x", "missing required parameter 'weight'"),
        ("out/x: ties { a weight=1 }", "out/x", "needs a base model"),
        ("out/x: linear { aa weight=1 }", "out/x", "did you mean 'a'"),
        ("out/x: passthrough { slice a[0:9] }", "out/x", "has 4 layers"),
        ("out/x: linear { a t=1 weight=1 }", "out/x", "unknown parameter"),
        ("out/x: slerp(base=base) { a t=0.5 }", "out/x", "global parameter"),
        ("out/x: slerp(base=base, t=0.5) { a ; b }", "out/x", "exactly 2"),
        ("out/x: passthrough { slice { a[0:2] ; b[0:3] } }", "out/x", "same number of layers"),
        ("out/x: linear(dtype=float33) { a weight=1 }", "out/x", "float32"),
        ("out/x: linear { a weight=1 }\nout/y: linear { out/x weight=1 ; a weight=1 }\nout/x2: out/y", "out/x2", None),
    ],
)
def test_plan_errors(tiny_models, tmp_path, body, target, message):
    if message is None:
        plan(tmp_path, tiny_models, body, "out/y")
        return
    with pytest.raises(UserError) as e:
        plan(tmp_path, tiny_models, body, target)
    assert message in e.value.render()


def test_cycle_is_refused(tiny_models, tmp_path):
    decls = "\n".join(f'model {n} = "{p}"' for n, p in tiny_models.items())
    mf = parse_text(
        decls + "\nout/a: linear { out/b weight=1 }\nout/b: linear { out/a weight=1 }\n", str(tmp_path / "M")
    )
    with pytest.raises(ConfigError, match="cycle"):
        build_graph(mf)


def test_missing_model_folder(tmp_path):
    mf = parse_text('model m = "./nope"\nout/x: linear { m weight=1 }\n', str(tmp_path / "Mergefile"))
    with pytest.raises(UserError, match="does not exist"):
        Planner(mf).plan("out/x")
