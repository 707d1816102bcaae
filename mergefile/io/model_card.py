"""The model card (README.md with Hugging Face metadata) and the recipe as mergekit YAML.

Pure: data in, text out. Every output folder gets both, so a merge pushed to the Hub says
what it was made of (``base_model``), how (the method and its paper), and carries the exact
recipe that built it. The text is deterministic, so an unchanged recipe rewrites nothing.
The mergekit rendering is best effort (a later export owns exactness): models, slices,
parameters, base model and dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mergefile.syntax.ast import AutoRef, HfRef, Param, PathRef, Source, Sym, Target

# Target settings that are not method parameters (planner.SETTINGS), rendered on their own.
_SETTINGS = {"base", "dtype", "out_dtype", "seed", "tokenizer_source", "tokenizer", "chat_template"}


@dataclass(frozen=True)
class CardInput:
    """One input model as the card names it."""

    label: str  # the recipe's name for it
    hub: str | None = None  # repo id when it came from the Hub
    revision: str | None = None
    commit: str | None = None
    target: bool = False  # another target's output
    base: bool = False


@dataclass(frozen=True)
class CardData:
    """Everything the card says about one output."""

    name: str
    method: str
    reference: str
    summary: str
    inputs: tuple[CardInput, ...]
    dtype: str | None
    recipe: str | None  # the recipe text that built it (Target.origin)
    recipe_format: str = "mergefile"  # or "yaml"
    lineage: tuple[str, ...] = ()  # Hub ids behind the inputs that are other targets' outputs


def base_models(inputs: tuple[CardInput, ...], lineage: tuple[str, ...] = ()) -> list[str]:
    """``base_model`` metadata: Hub ids only (the Hub rejects local names such as ``out/x``):
    each Hub input's, then ``lineage`` (the Hub ids upstream targets were made from)."""
    return list(dict.fromkeys([i.hub for i in inputs if i.hub] + list(lineage)))


def _input_line(i: CardInput) -> str:
    if i.hub:
        pin = ", ".join(
            x
            for x in (f"revision {i.revision}" if i.revision else "", f"commit {i.commit[:12]}" if i.commit else "")
            if x
        )
        text = f"[{i.hub}](https://huggingface.co/{i.hub})" + (f" ({pin})" if pin else "")
    elif i.target:
        text = f"`{i.label}` (built by an earlier target of the same recipe)"
    else:
        text = f"`{i.label}` (local model)"
    return "- " + text + (" — base model" if i.base else "")


def render_card(d: CardData) -> str:
    """README.md text: YAML front matter, then what was merged, how, and the recipe."""
    meta: dict[str, Any] = {"library_name": "transformers", "tags": ["merge", "mergebuild"]}
    bases = base_models(d.inputs, d.lineage)
    if bases:
        meta["base_model"] = bases
    front = yaml.safe_dump(meta, sort_keys=True, default_flow_style=False, allow_unicode=True)
    title = d.name.rstrip("/").rsplit("/", 1)[-1]
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        "",
        f"# {title}",
        "",
        "This model is a merge of pre-trained language models, built with mergebuild.",
        "",
        "## Merge method",
        "",
        f"**{d.method}**"
        + (f": {d.summary}" if d.summary else "")
        + (f" ([paper]({d.reference}))" if d.reference else ""),
        "",
        "## Models merged",
        "",
    ]
    lines += [_input_line(i) for i in d.inputs]
    if d.dtype:
        lines += ["", f"Weights are stored as `{d.dtype}`."]
    lines += ["", "## Recipe", ""]
    if d.recipe:
        fence = "yaml" if d.recipe_format == "yaml" else ""
        lines += [f"```{fence}", d.recipe.strip("\n"), "```", ""]
    else:
        lines += ["(the recipe text is not available)", ""]
    lines += ["The same recipe as a mergekit configuration is in `mergebuild_config.yml`.", ""]
    return "\n".join(lines)


# -- mergekit YAML -----------------------------------------------------------------------------
def _value(v: Any, model_name: Callable[[Any], str]) -> Any:
    if isinstance(v, (Sym, HfRef, PathRef, AutoRef)):
        return model_name(v)
    if isinstance(v, tuple):
        return [_value(x, model_name) for x in v]
    return v


def _params(
    params: tuple[Param, ...], model_name: Callable[[Any], str], skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """mergekit ``parameters``: a plain value, or ``[{filter, value}, ..., {value}]`` when filtered."""
    rows: dict[str, list[tuple[str | None, Any]]] = {}
    for p in params:
        if p.name not in skip:
            rows.setdefault(p.name, []).append((p.filter, _value(p.value, model_name)))
    out: dict[str, Any] = {}
    for name, vals in rows.items():
        filtered = [{"filter": f, "value": v} for f, v in vals if f is not None]
        plain = [v for f, v in vals if f is None]
        if not filtered:
            out[name] = plain[-1]
        else:
            out[name] = filtered + ([{"value": plain[-1]}] if plain else [])
    return out


def _source(s: Source, model_name: Callable[[Any], str]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model_name(s.ref)}
    if s.layers is not None:
        row["layer_range"] = list(s.layers)
    if s.params:
        row["parameters"] = _params(s.params, model_name)
    return row


def mergekit_config(t: Target, model_name: Callable[[Any], str], dtype: str | None = None) -> dict[str, Any]:
    """A mergekit config dict for one target (``model_name`` maps a reference to its name)."""
    cfg: dict[str, Any] = {"merge_method": t.method}
    settings = {p.name: _value(p.value, model_name) for p in t.params if p.name in _SETTINGS and p.filter is None}
    if "base" in settings:
        cfg["base_model"] = settings["base"]
    modules = getattr(t, "modules", ())
    if modules:  # a multi-module model: each module has its own models or slices
        cfg["modules"] = {}
        for m in modules:
            block = _inputs(m, model_name)
            if m.params:
                block["parameters"] = _params(m.params, model_name, frozenset())
            cfg["modules"][m.name] = block
    else:
        cfg.update(_inputs(t, model_name))
    params = _params(t.params, model_name, frozenset(_SETTINGS))
    if params:
        cfg["parameters"] = params
    if settings.get("dtype") or dtype:
        cfg["dtype"] = settings.get("dtype") or dtype
    if settings.get("out_dtype"):
        cfg["out_dtype"] = settings["out_dtype"]
    tok = settings.get("tokenizer_source") or settings.get("tokenizer")
    if tok:
        cfg["tokenizer_source"] = tok
    if settings.get("chat_template"):
        cfg["chat_template"] = settings["chat_template"]
    return cfg


def _inputs(owner: Any, model_name: Callable[[Any], str]) -> dict[str, Any]:
    """``slices:`` or ``models:`` of a target or of one module."""
    if owner.slices:
        rows = []
        for sl in owner.slices:
            row: dict[str, Any] = {"sources": [_source(s, model_name) for s in sl.sources]}
            if sl.params:
                row["parameters"] = _params(sl.params, model_name, frozenset({"base"}))
            rows.append(row)
        return {"slices": rows}
    return {"models": [_source(s, model_name) for s in owner.sources]}


def render_mergekit_yaml(
    t: Target, model_name: Callable[[Any], str], dtype: str | None = None, *, source_yaml: str | None = None
) -> str:
    """``mergebuild_config.yml``: the YAML a target came from, else a rendering of it."""
    head = f"# mergekit-style configuration of {t.name}, written by mergebuild (best effort)\n"
    if source_yaml is not None:
        return source_yaml if source_yaml.endswith("\n") else source_yaml + "\n"
    body = yaml.safe_dump(
        mergekit_config(t, model_name, dtype), sort_keys=False, default_flow_style=None, allow_unicode=True
    )
    return head + body


def ref_namer(hub_ids: Mapping[str, str]) -> Callable[[Any], str]:
    """A ``model_name`` function: hub id for models from the Hub, the recipe's name otherwise."""

    def name(ref: Any) -> str:
        if isinstance(ref, Sym):
            return hub_ids.get(ref.name, ref.name)
        if isinstance(ref, HfRef):
            return ref.repo + (f"@{ref.revision}" if ref.revision else "")
        if isinstance(ref, PathRef):
            return ref.path
        if isinstance(ref, AutoRef):
            return ref.text
        return str(ref)

    return name
