"""Public mergekit configs (tests/data/mergekit_corpus, each with its source in SOURCES.json)
build unchanged with ``mergebuild --config`` and give mergekit 0.1.5's tensors.

The world is ``tests/corpus_env.py``: tiny models for every model the configs name, hub ids in
an offline Hugging Face cache, local paths under the working directory. mergekit's outputs were
recorded by ``bench/mergekit_corpus.py`` into ``reference/`` (so no mergekit is needed here).
A config mergekit builds must build; one mergekit refuses may build or stop with a clean exit-2
message. Tensors are compared bit for bit and in ulps; the counts are printed (``-s``) and kept
from falling below what was measured.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.corpus_env import CORPUS, configs, offline_world
from tests.helpers import cli, read_tensors

REFERENCE = CORPUS / "reference"
STATUS = json.loads((REFERENCE / "status.json").read_text())
MEASURED = {"builds": 64, "equal": 45, "within_1_ulp": 45}  # floors: the counts when last measured
_INT = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from offline_world(tmp_path_factory, "corpus-world")


@pytest.fixture(scope="module")
def reference():
    from safetensors.torch import load_file

    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(REFERENCE / "tensors.safetensors")).items():
        name, tensor = key.split("::", 1)
        out.setdefault(name, {})[tensor] = t
    return out


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in units in the last place between two tensors of one float dtype."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return 1 << 30
    kind = _INT[a.dtype]
    lo = torch.iinfo(kind).min

    def ordered(x: torch.Tensor) -> torch.Tensor:
        i = x.contiguous().view(kind).to(torch.int64)
        return torch.where(i < 0, lo - i, i)

    return int((ordered(a) - ordered(b)).abs().max()) if a.numel() else 0


def compare(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> tuple[str, str]:
    """``equal``, ``equal_in_dtype``, ``within_1_ulp`` or ``differing``, and how.

    ``equal_in_dtype``: mergekit wrote another dtype (its arcee_fusion promotes a bf16 merge to
    float32 through its float mask) and its tensors rounded to the config's dtype are ours.
    """
    if sorted(got) != sorted(want):
        return "differing", f"tensor names differ: {sorted(set(got) ^ set(want))[:3]}"
    if any(got[k].dtype != want[k].dtype for k in want):
        cast = {k: want[k].to(got[k].dtype) for k in want}
        if all(torch.equal(got[k], cast[k]) for k in want):
            return "equal_in_dtype", f"mergekit wrote {want[next(iter(want))].dtype}"
        want = cast
    far = {k: ulps(got[k], want[k]) for k in want}
    worst = max(far.values(), default=0)
    cut = 1 if worst > 1 else 0  # count what puts it in its category
    tensors = sum(v > cut for v in far.values())
    entries = sum(int((got[k] != want[k]).sum()) for k in want if far[k] > cut)
    how = f"{tensors}/{len(want)} tensors, {entries} entries, up to {worst} ulp"
    return ("equal" if worst == 0 else "within_1_ulp" if worst <= 1 else "differing"), how


# docs/methods.md, deliberate differences 10 (random masks) and 11 (ties at a selection cut)
EXPLAINED = {"dare_ties", "dare_linear", "della", "della_linear", "ties", "sce", "breadcrumbs", "breadcrumbs_ties"}


def methods_of(name: str) -> set[str]:
    """The merge methods a corpus config names (every document, MoE/evolve files name none)."""
    import re

    text = (CORPUS / f"{name}.yml").read_text()
    return set(re.findall(r"merge_method:\s*['\"]?([A-Za-z_]+)", text))


# Configs whose MoE routers come from a forward pass of the base model (gate_mode: hidden). Its
# float32 matmuls round differently on different CPUs' vector code, so mergekit's own routers
# move in the last bits from one CPU to the next: on the 2026-12 CI machine mergekit 0.1.5 run
# live and mergebuild agree bit for bit, and both are up to 4 bf16 ulp from this recording
# (made on another CPU). Such a config counts as equal when everything else is equal.
FORWARD_PASS = {"mergekit-docs-moe-hermes"}
ROUTER, ROUTER_ULPS = ".mlp.gate.weight", 4

RESULTS: dict[str, str] = {}
HOW: dict[str, str] = {}


@pytest.mark.parametrize("config", configs(), ids=[c.stem for c in configs()])
def test_public_config_builds_as_mergekit_builds_it(world, reference, config, capsys):
    name = config.stem
    code = cli(world, "--config", str(config), f"out/{name}", cache=world / "cache")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if not STATUS[name]["built"]:
        assert code in (0, 2), err  # mergekit refuses it: building or a clean refusal are both fine
        RESULTS[name] = "mergekit fails"
        return
    assert code == 0, f"mergekit builds {name}, mergebuild does not: {err}"
    got = read_tensors(world / "out" / name)
    RESULTS[name], HOW[name] = compare(got, reference[name])
    if RESULTS[name] != "equal" and name in FORWARD_PASS:
        rest = compare(*({k: v for k, v in t.items() if not k.endswith(ROUTER)} for t in (got, reference[name])))
        routers = max(ulps(got[k], reference[name][k]) for k in reference[name] if k.endswith(ROUTER))
        if rest[0] == "equal" and routers <= ROUTER_ULPS:
            RESULTS[name] = "equal_but_cpu_routers"


def test_corpus_counts():
    """Runs after the builds: the counts, and no fewer equal outputs than last measured."""
    if len(RESULTS) < len(configs()):
        pytest.skip("only part of the corpus ran")
    counts = {
        k: sum(v == k for v in RESULTS.values())
        for k in ("equal", "equal_in_dtype", "equal_but_cpu_routers", "within_1_ulp", "differing")
    }
    counts["builds"] = sum(v != "mergekit fails" for v in RESULTS.values())
    print(f"\ncorpus: {len(RESULTS)} configs, mergekit builds {counts['builds']}: {counts}")
    for k, v in sorted(RESULTS.items()):
        if v in ("differing", "within_1_ulp"):
            print(f"  {v}: {k}: {HOW[k]} ({', '.join(sorted(methods_of(k)))})")
    unexplained = {k for k, v in RESULTS.items() if v == "differing" and not methods_of(k) & EXPLAINED}
    assert not unexplained, f"differ from mergekit with no random mask or selection cut: {unexplained}"
    assert counts["builds"] >= MEASURED["builds"]
    same = counts["equal"] + counts["equal_in_dtype"] + counts["equal_but_cpu_routers"]
    assert same >= MEASURED["equal"] and same + counts["within_1_ulp"] >= MEASURED["within_1_ulp"]


def test_arcee_fusion_float32_equals_mergekit(world):
    """A float32 CPU arcee_fusion merge keeps exactly mergekit 0.1.5's entries (scores in float32,
    as mergekit computes them; method version 3): every tensor bit for bit."""
    from safetensors.torch import load_file

    want = {
        k.split("::", 1)[1]: v
        for k, v in load_file(str(REFERENCE / "extra-tensors.safetensors")).items()
        if k.startswith("arcee-float32::")
    }
    config = CORPUS.parent / "mergekit_extra" / "arcee-float32.yml"
    assert cli(world, "--config", str(config), "out/arcee32", cache=world / "cache") == 0
    got = read_tensors(world / "out" / "arcee32")
    assert sorted(got) == sorted(want) and len(want) == 39
    differing = [k for k in want if not torch.equal(got[k], want[k])]
    assert differing == []
    base = read_tensors(world / "model_a")
    assert sum(not torch.equal(want[k], base[k].float()) for k in want) > 20  # a real selection, not the base
