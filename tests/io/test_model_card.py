"""Model card and mergekit YAML: pure renderings, and their place in the output's aux key."""

from __future__ import annotations

import yaml

from mergefile.io.model_card import CardData, CardInput, mergekit_config, ref_namer, render_card, render_mergekit_yaml
from mergefile.syntax import parse_mergefile
from tests.helpers import cli_json, mergefile_for, shard_bytes

RECIPE = """model base = hf("org/base")
model m = "models/m"
model c = "models/c"
out/x: ties(base=base, dtype=bfloat16) {
    m  weight=0.6 density=0.5
    c  weight=0.4
    weight[self_attn] = [0.3, 0.7]
    density = 0.4
}
out/f: passthrough {
    slice m[0:2]
    slice { c[1:3] ; scale = 0.5 }
}
"""


def _targets():
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    (d / "Mergefile").write_text(RECIPE)
    return parse_mergefile(d / "Mergefile").targets()


def test_card_front_matter_and_sections():
    d = CardData(
        name="out/x",
        method="ties",
        reference="https://arxiv.org/abs/2306.01708",
        summary="trim, elect, merge",
        inputs=(
            CardInput("m"),
            CardInput("base", hub="org/base", revision="main", commit="c" * 40, base=True),
            CardInput("out/y", target=True),
        ),
        dtype="bfloat16",
        recipe="out/x: ties(base=base) {\n  m weight=1\n}",
    )
    text = render_card(d)
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---")[1])
    # Hub ids only: local models and other targets are not valid base_model metadata
    assert meta == {"base_model": ["org/base"], "library_name": "transformers", "tags": ["merge", "mergebuild"]}
    assert "](http" not in text.replace("(https://arxiv.org/abs/2306.01708)", "").replace(
        "(https://huggingface.co/org/base)", ""
    )  # nothing else is linked
    assert "# x\n" in text and "**ties**" in text and "(https://arxiv.org/abs/2306.01708)" in text
    assert "[org/base](https://huggingface.co/org/base) (revision main, commit cccccccccccc) — base model" in text
    assert "```\nout/x: ties(base=base) {\n  m weight=1\n}\n```" in text
    assert render_card(d) == text  # deterministic


def test_mergekit_rendering_of_models_and_slices():
    t = _targets()
    namer = ref_namer({"base": "org/base"})
    cfg = mergekit_config(t["out/x"], namer)
    assert cfg["merge_method"] == "ties" and cfg["base_model"] == "org/base" and cfg["dtype"] == "bfloat16"
    assert cfg["models"] == [
        {"model": "m", "parameters": {"weight": 0.6, "density": 0.5}},
        {"model": "c", "parameters": {"weight": 0.4}},
    ]
    assert cfg["parameters"] == {"weight": [{"filter": "self_attn", "value": [0.3, 0.7]}], "density": 0.4}
    f = mergekit_config(t["out/f"], namer)
    assert f["slices"] == [
        {"sources": [{"model": "m", "layer_range": [0, 2]}]},
        {"sources": [{"model": "c", "layer_range": [1, 3]}], "parameters": {"scale": 0.5}},
    ]
    text = render_mergekit_yaml(t["out/x"], namer)
    assert text.startswith("# mergekit-style") and yaml.safe_load(text) == cfg
    assert render_mergekit_yaml(t["out/x"], namer, source_yaml="a: 1") == "a: 1\n"


def test_card_change_rewrites_aux_files_only(tiny_models, tmp_path, capsys):
    cache = tmp_path / "cache"
    mf = mergefile_for(tmp_path, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli_json(tmp_path, cache=cache, capsys=capsys)["exit"] == 0
    shards = shard_bytes(tmp_path / "out/x")
    inodes = {p.name: p.stat().st_ino for p in (tmp_path / "out/x").glob("*.safetensors")}
    assert "base_model" not in (tmp_path / "out/x/README.md").read_text()  # local models only
    # renaming a model changes no tensor key, only the card and the YAML
    mf.write_text(mf.read_text().replace("model a ", "model alpha ").replace("{ a weight", "{ alpha weight"))
    r = cli_json(tmp_path, cache=cache, capsys=capsys)["targets"][0]
    assert r["built"] and r["computed"] == 0 and r["shards_write"] == [] and not r["stale"]
    assert shard_bytes(tmp_path / "out/x") == shards
    assert {p.name: p.stat().st_ino for p in (tmp_path / "out/x").glob("*.safetensors")} == inodes  # hard links
    assert "- `alpha` (local model)\n" in (tmp_path / "out/x/README.md").read_text()
    assert "model: alpha" in (tmp_path / "out/x/mergebuild_config.yml").read_text()
    assert cli_json(tmp_path, cache=cache, capsys=capsys)["targets"][0]["up_to_date"]


def test_mergekit_yaml_of_a_multi_module_target():
    """Module blocks render as mergekit ``modules:``, each with its models/slices and parameters."""
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    (d / "Mergefile").write_text("""model a = "models/a"
model b = "models/b"
out/vlm: linear {
    module text_decoder { a weight=1 ; b weight=3 }
    module vision_tower {
        slice { a[0:2] weight=0.5 ; b[0:2] weight=0.5 }
    }
    module multi_modal_projector { a ; b ; weight = 0.25 }
}
""")
    t = parse_mergefile(d / "Mergefile").targets()["out/vlm"]
    cfg = mergekit_config(t, ref_namer({}))
    assert "models" not in cfg and "slices" not in cfg
    mods = cfg["modules"]
    assert list(mods) == ["text_decoder", "vision_tower", "multi_modal_projector"]
    assert mods["text_decoder"]["models"] == [
        {"model": "a", "parameters": {"weight": 1}},
        {"model": "b", "parameters": {"weight": 3}},
    ]
    assert [s["model"] for s in mods["vision_tower"]["slices"][0]["sources"]] == ["a", "b"]
    assert mods["vision_tower"]["slices"][0]["sources"][0]["layer_range"] == [0, 2]
    assert mods["multi_modal_projector"]["parameters"] == {"weight": 0.25}
    assert yaml.safe_load(render_mergekit_yaml(t, ref_namer({})))["modules"] == mods


def test_lineage_follows_upstream_targets():
    from mergefile.io.model_card import base_models

    inputs = (CardInput("m"), CardInput("out/y", target=True), CardInput("b", hub="org/b"))
    assert base_models(inputs, ("org/base", "org/b")) == ["org/b", "org/base"]
    card = render_card(CardData("x", "linear", "", "", (CardInput("m"),), None, None))
    assert "base_model" not in card.split("---")[1]
