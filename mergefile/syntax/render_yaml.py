"""Mergefile AST -> mergekit YAML (``mergebuild export``): the same merge, for mergekit users.

What a Mergefile says in its own ways is spelled out the way mergekit reads it: model names
become their paths or hub ids (``repo@revision``), file-level variables are substituted,
file-level defaults become top-level ``parameters``, a filtered parameter and its fallback
become one ``{filter, value}`` list (filtered entries first, the fallback last: mergekit takes
the first match), and a target that uses other targets becomes a multi-document file whose
stages carry ``name:`` (the ``mergekit-multi`` format), the requested target last.

Relative paths are rewritten for the folder the YAML will live in (``out_dir``) and written
as ``./x`` or ``../x`` so neither mergekit nor mergebuild mistakes them for hub ids.
``seed`` is written as a top-level ``seed:`` key, a mergebuild extension (mergekit ignores it;
its equivalent is ``mergekit-yaml --random-seed``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from mergefile.errors import ConfigError, unknown
from mergefile.syntax.ast import (
    AutoRef,
    HfRef,
    Mergefile,
    Module,
    Param,
    PathRef,
    Phony,
    Slice,
    Source,
    Sym,
    Target,
    Value,
)
from mergefile.syntax.yaml_import import stage_prefix

SETTINGS = ("base", "dtype", "out_dtype", "seed", "tokenizer", "tokenizer_source", "chat_template")
TOKEN_PARAMS = ("token", "token_force", "pad_to_multiple_of")
_MODEL_WORDS = ("union", "base", "zero", "auto")  # enum words where a model may also go


class _Dumper(yaml.SafeDumper):
    """Lists of plain values (gradients, layer ranges) in flow style: ``[0, 0.5, 1]``."""

    def represent_list(self, data: list) -> yaml.SequenceNode:
        flow = all(isinstance(x, (int, float, str, bool)) for x in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def _norm(name: str) -> str:
    name = name.strip()
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") or name


class _Exporter:
    """Turns the targets of one Mergefile into mergekit config dicts."""

    def __init__(self, mf: Mergefile, out_dir: str):
        self.mf, self.rules, self.models = mf, mf.targets(), mf.models()
        self.assigns = {a.name: a for a in mf.assigns().values()}
        self.variables = {a.name: a.value for a in self.assigns.values()}
        known = mf.path not in ("<string>", "")
        self.base_dir = str(Path(mf.path).resolve().parent) if known else os.getcwd()
        self.out_dir = os.path.abspath(out_dir)
        self.stage_names: dict[str, str] = {}

    # -- names and references --
    def value(self, v: Value) -> Value:
        """Variables substituted (recursively in lists)."""
        if isinstance(v, Sym) and v.name in self.variables:
            return self.value(self.variables[v.name])
        return tuple(self.value(x) for x in v) if isinstance(v, tuple) else v

    def target_of(self, v: Value) -> str | None:
        v = self.value(v)
        if isinstance(v, Sym) and v.name not in self.models and _norm(v.name) in self.rules:
            return _norm(v.name)
        return None

    def path(self, path: str, loc: Any) -> str:
        base = os.path.dirname(os.path.abspath(loc.file)) if loc and loc.file not in ("<string>", "") else self.base_dir
        if os.path.isabs(path):
            return os.path.normpath(path)
        rel = os.path.relpath(os.path.join(base, path), self.out_dir).replace(os.sep, "/")
        return rel if rel.startswith("../") or rel == ".." else "./" + rel

    def ref(self, v: Value, loc: Any = None) -> str | dict[str, str]:
        """A model in mergekit's string form ``path_or_id[@rev][+lora[@rev]]``, or its dict form
        ``{model, lora, override_architecture}`` when the model is read as another class."""
        v = self.value(v)
        if isinstance(v, Sym) and v.name in self.models:
            v = self.models[v.name].ref
        arch = getattr(v, "architecture", None)
        if arch is not None:
            from dataclasses import replace

            lora = getattr(v, "lora", None)
            out = {"model": self.ref(replace(v, architecture=None, lora=None), loc)}
            if lora is not None:
                out["lora"] = self.ref(lora, loc)
            return {**out, "override_architecture": arch}
        if isinstance(v, str):
            v = PathRef(v, loc)
        if isinstance(v, Sym):
            if v.name in self.models:
                return self.ref(self.models[v.name].ref)
            target = self.target_of(v)
            if target is None:
                raise unknown("model", v.name, list(self.models) + list(self.rules), v.loc or loc)
            return self.stage_names[target]
        if isinstance(v, PathRef):
            text = self.path(v.path, v.loc or loc)
        elif isinstance(v, HfRef):
            text = v.repo + (f"@{v.revision}" if v.revision else "")
        elif isinstance(v, AutoRef):
            name, _, rev = v.text.partition("@")
            local = os.path.join(v.base_dir, name)
            text = self.path(os.path.abspath(local), None) if os.path.isdir(local) and not rev else v.text
        else:
            raise ConfigError(f"expected a model, got {v!r}", loc)
        lora = getattr(v, "lora", None)
        return text + ("+" + self.ref(lora, loc) if lora is not None else "")

    # -- parameters --
    def plain(self, v: Value) -> Any:
        v = self.value(v)
        if isinstance(v, tuple):
            return [self.plain(x) for x in v]
        if isinstance(v, Sym):
            return v.name
        if isinstance(v, (HfRef, PathRef, AutoRef)):
            return self.ref(v)
        return v

    def params(self, ps: tuple[Param, ...], fallback: dict[str, Param] | None = None) -> dict[str, Any]:
        """Params of one level -> mergekit ``parameters`` (filters become conditional lists)."""
        out: dict[str, Any] = {}
        names = list(dict.fromkeys([p.name for p in ps] + list(fallback or {})))
        for name in names:
            filtered = [p for p in ps if p.name == name and p.filter is not None]
            plain = [p for p in ps if p.name == name and p.filter is None]
            last = plain[-1] if plain else (fallback or {}).get(name)
            if not filtered:
                out[name] = self.plain(last.value)
                continue
            entries = [{"filter": p.filter, "value": self.plain(p.value)} for p in filtered]
            if last is not None:
                entries.append({"value": self.plain(last.value)})
            out[name] = entries
        return out

    def setting(self, t: Target, name: str) -> Param | None:
        found = [p for p in t.params if p.name == name and p.filter is None]
        if found:
            return found[-1]
        a = self.assigns.get(name)
        return Param(a.name, a.value, None, a.loc) if a is not None else None

    # -- inputs --
    def source(self, s: Source, in_slice: bool) -> dict[str, Any]:
        if s.layers is not None and not in_slice:
            raise ConfigError("a layer range belongs in a 'slice' line, not on a model line", s.loc)
        out: dict[str, Any] = {"model": self.ref(s.ref, s.loc)}
        if s.layers is not None:
            out["layer_range"] = list(s.layers)
        if s.params:
            out["parameters"] = self.params(s.params)
        return out

    def slice(self, sl: Slice) -> dict[str, Any]:
        out: dict[str, Any] = {"sources": [self.source(s, True) for s in sl.sources]}
        base = [p for p in sl.params if p.name == "base" and p.filter is None]
        if base:
            out["base_model"] = self.ref(base[-1].value, base[-1].loc)
        rest = tuple(p for p in sl.params if p.name != "base")
        if rest:
            out["parameters"] = self.params(rest)
        return out

    def inputs(self, holder: Target | Module) -> dict[str, Any]:
        if holder.slices:
            return {"slices": [self.slice(sl) for sl in holder.slices]}
        return {"models": [self.source(s, False) for s in holder.sources]}

    def module(self, m: Module) -> dict[str, Any]:
        out = self.inputs(m)
        if m.params:
            out["parameters"] = self.params(m.params)
        return out

    # -- a whole target --
    def config(self, t: Target) -> dict[str, Any]:
        from mergefile.methods.registry import get_method

        if t.args:
            raise ConfigError(
                f"target '{t.name}' uses {t.method}(...) with positional arguments; mergekit YAML cannot express it",
                t.loc,
            )
        method = get_method(t.method, t.method_loc or t.loc)
        out: dict[str, Any] = {"merge_method": t.method}
        base = self.setting(t, "base")
        if base is not None:
            out["base_model"] = self.ref(base.value, base.loc)
        if t.modules:
            out["modules"] = {m.name: self.module(m) for m in t.modules}
        else:
            out.update(self.inputs(t))
        own = tuple(p for p in t.params if p.name not in SETTINGS + TOKEN_PARAMS)
        defaults = {n: a for n, a in self.assigns.items() if method.param(n) is not None}
        defaults = {n: Param(n, a.value, None, a.loc) for n, a in defaults.items()}
        params = self.params(own, defaults)
        if params:
            out["parameters"] = params
        for name in ("dtype", "out_dtype"):
            p = self.setting(t, name)
            if p is not None:
                out[name] = self.plain(p.value)
        out.update(self.tokenizer(t))
        for name in ("chat_template", "seed"):
            p = self.setting(t, name)
            if p is not None:
                out[name] = self.plain(p.value)
        return out

    def tokenizer(self, t: Target) -> dict[str, Any]:
        """``tokenizer_source``, or the ``tokenizer:`` block when tokens or padding are set."""
        src = self.setting(t, "tokenizer") or self.setting(t, "tokenizer_source")  # synonyms
        source = self.model_or_word(src.value, src.loc) if src is not None else None
        extra = [p for p in t.params if p.name in TOKEN_PARAMS]
        if not extra:
            return {"tokenizer_source": source} if source is not None else {}
        block: dict[str, Any] = {} if source is None else {"source": source}
        tokens: dict[str, dict[str, Any]] = {}
        for p in extra:
            if p.name == "pad_to_multiple_of":
                block["pad_to_multiple_of"] = self.plain(p.value)
            elif p.name == "token":
                tokens.setdefault(p.filter or "", {}).update(self.token_source(p))
            elif self.plain(p.value) is True:
                tokens.setdefault(p.filter or "", {})["force"] = True
        if tokens:
            block["tokens"] = tokens
        return {"tokenizer": block}

    def model_or_word(self, v: Value, loc: Any) -> str:
        v = self.value(v)
        return v.name if isinstance(v, Sym) and v.name in _MODEL_WORDS else self.ref(v, loc)

    def token_source(self, p: Param) -> dict[str, Any]:
        v = self.value(p.value)
        if isinstance(v, Sym) and v.name == "auto":
            return {}
        if isinstance(v, Sym) and v.name == "zero":
            return {"source": {"kind": "zero"}}
        if isinstance(v, tuple) and len(v) == 2:
            which = "token_id" if isinstance(v[1], int) and not isinstance(v[1], bool) else "token"
            return {"source": {"kind": "model_token", "model": self.ref(v[0], p.loc), which: v[1]}}
        return {"source": self.ref(v, p.loc)}

    def stages(self, name: str, seen: list[str]) -> list[str]:
        """``name``'s prerequisite targets, depth first, each once (prerequisites first)."""
        rule = self.rules[name]
        if isinstance(rule, Phony):
            raise ConfigError(f"'{name}' is a group of targets; export one of: {', '.join(rule.deps)}", rule.loc)
        for v in _model_values(rule):
            dep = self.target_of(v)
            if dep is not None and dep not in seen and dep != name:
                self.stages(dep, seen)
        if name not in seen:
            seen.append(name)
        return seen


def _model_values(t: Target) -> list[Value]:
    """Every value in a model position: sources, base=, tokenizer and token sources."""
    sources = list(t.sources) + [s for sl in t.slices for s in sl.sources]
    params = list(t.params) + [p for sl in t.slices for p in sl.params]
    for m in t.modules:
        sources += list(m.sources) + [s for sl in m.slices for s in sl.sources]
    out: list[Value] = [s.ref for s in sources]
    for p in params:
        if p.name in ("base", "tokenizer", "tokenizer_source", "token"):
            out.extend(p.value if isinstance(p.value, tuple) else (p.value,))
    return out


def _stage_name(stage: str, prefix: str, taken: set[str]) -> str:
    """A stage's ``name:`` for mergekit-multi: its folder below the target's, or, for a folder
    elsewhere (``/scratch/x``, ``../x``), its last component (made unique)."""
    from mergefile.syntax.render_mergefile import is_name

    name = stage[len(prefix) :] if prefix and stage.startswith(prefix) else stage
    if is_name(name) and not name.startswith("../"):
        return name
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", os.path.basename(name)).lstrip(".") or "stage"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def export_configs(mf: Mergefile, target: str, out_dir: str = ".") -> list[dict[str, Any]]:
    """The mergekit config dicts for ``target``: its stages (with ``name``) first, it last."""
    ex = _Exporter(mf, out_dir)
    name = _norm(target)
    if name not in ex.rules:
        raise unknown("target", target, ex.rules)
    order = ex.stages(name, [])
    prefix = stage_prefix(name)
    for stage in order[:-1]:
        ex.stage_names[stage] = _stage_name(stage, prefix, set(ex.stage_names.values()))
    docs = []
    for stage in order:
        rule = ex.rules[stage]
        assert isinstance(rule, Target)
        doc = ex.config(rule)
        docs.append({"name": ex.stage_names[stage], **doc} if stage != name else doc)
    return docs


def render_yaml(mf: Mergefile, target: str, out_dir: str = ".") -> str:
    """``target`` of ``mf`` as mergekit YAML (several documents for a multi-stage target).

    Args:
        mf: the parsed Mergefile (includes spliced).
        target: the target to export.
        out_dir: the folder the YAML will be saved in; relative model paths are rewritten for it.

    Example:
        >>> from mergefile.syntax import parse_text
        >>> mf = parse_text('out/x: linear { hf("org/a") weight=1 }')
        >>> print(render_yaml(mf, "out/x"), end="")
        merge_method: linear
        models:
        - model: org/a
          parameters:
            weight: 1
    """
    docs = export_configs(mf, target, out_dir)
    texts = [
        _extension_note(d) + yaml.dump(d, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000) for d in docs
    ]
    return "---\n".join(texts)


def _extension_note(doc: dict[str, Any]) -> str:
    """A comment over a document whose method mergekit lacks (``Method.mergekit`` False)."""
    from mergefile.methods.registry import get_method

    name = doc.get("merge_method")
    if not isinstance(name, str) or get_method(name).mergekit:
        return ""
    return (
        f"# merge_method {name} is a mergebuild extension: mergekit cannot build this config;\n"
        f"# build it with mergebuild (mergebuild --config FILE TARGET)\n"
    )
