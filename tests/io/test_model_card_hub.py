"""Model cards the Hub accepts: built cards parse with huggingface_hub's ModelCard and
metadata_load, and list Hub ids only, a multi-stage target its upstream targets' Hub bases."""

from __future__ import annotations

import re

from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load

from tests.cli.test_verbs_hub import hub  # noqa: F401 - fixture
from tests.helpers import cli, mergefile_for

RECIPE = """
model base = hf("org/base")
model a = hf("org/a")
out/ab: task_arithmetic(base=base) {
    a weight=0.5
    local weight=0.5
}
"../final/m": slerp(base=out/ab) {
    out/ab
    "{b}"
    t = 0.5
}
"""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def test_multi_stage_card_validates_and_lists_hub_ids_only(tiny_models, hub, tmp_path):  # noqa: F811
    proj = tmp_path / "proj"
    proj.mkdir()
    mergefile_for(proj, {"local": tiny_models["c"]}, RECIPE.replace("{b}", str(tiny_models["b"])))
    assert cli(proj, "../final/m", cache=tmp_path / "cache") == 0
    for folder, bases in (
        (proj / "out" / "ab", ["org/a", "org/base"]),
        (tmp_path / "final" / "m", ["org/a", "org/base"]),
    ):
        readme = folder / "README.md"
        meta = metadata_load(readme)
        assert sorted(meta["base_model"]) == bases and all(HUB_ID.match(b) for b in meta["base_model"])
        card = ModelCard.load(readme)
        card.validate = None  # (validation against the Hub needs the network; the data is checked here)
        assert card.data.base_model == meta["base_model"] and card.data.library_name == "transformers"
        text = readme.read_text()
        for link in re.findall(r"\]\(([^)]+)\)", text):  # every link: the Hub page of a Hub input, or a paper
            assert link.startswith(("https://huggingface.co/org/", "https://arxiv.org/", "https://doi.org/")), link
        for name in re.findall(r"`([\w.\-]+\.(?:yml|json|md))`", text):  # files the card names are in the folder
            assert (folder / name).is_file(), name
