"""What a search leaves in its storage path: the best recipe, as a Mergefile and as mergekit YAML,
the history, and a plot.

``best.mf`` is self-contained (model declarations with absolute paths or hub ids, then the best
candidate as the target ``final_model``), so ``mergebuild -f STORAGE/best.mf`` rebuilds exactly
the evaluated model into ``STORAGE/final_model`` — every parameter was rounded before the
candidate was built, so the text holds the exact values.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mergefile.syntax.ast import AutoRef, HfRef, ModelDecl, Param, PathRef, Source, Sym, Target
from mergefile.targets.evolve.config import EvolveConfig

__all__ = ["FINAL", "append_history", "read_history", "render_mergefile", "render_mergekit", "write_plot", "write_text"]

FINAL = "final_model"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)*\Z")
_KEYWORDS = {"true", "false", "include", "model", "slice", "module", "hf", "as"}


def write_text(path: Path, text: str) -> None:
    """Write atomically (temp file + rename): readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---- history --------------------------------------------------------------------------------


def append_history(path: Path, line: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_history(path: Path) -> list[dict[str, Any]]:
    """The history lines; a torn last line (a kill mid-write) is dropped."""
    if not path.is_file():
        return []
    out = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError:
            break
    return out


# ---- references ---------------------------------------------------------------------------


def _decls(config: EvolveConfig) -> dict[str, ModelDecl]:
    return {s.name: s for s in config.statements if isinstance(s, ModelDecl)}


def _abs_path(ref) -> str | None:
    if isinstance(ref, PathRef):
        base = Path(ref.loc.file).parent if ref.loc and ref.loc.file not in ("<string>", "") else Path.cwd()
        return str((base / ref.path).resolve())
    if isinstance(ref, AutoRef):
        from mergefile.syntax.model_paths import local_folder

        local = local_folder(ref) if "@" not in ref.text else None
        if local is not None:
            return str(local.path.resolve())
    return None


def _hub(ref) -> tuple[str, str | None] | None:
    if isinstance(ref, HfRef):
        return ref.repo, ref.revision
    if isinstance(ref, AutoRef) and _abs_path(ref) is None:
        name, _, rev = ref.text.partition("@")
        return name, rev or None
    return None


def _mf_ref(ref, config: EvolveConfig, base_dir: Path) -> str:
    if isinstance(ref, Sym):
        decl = _decls(config).get(ref.name)
        if decl is None:  # another target of the Mergefile: its output folder
            return _quote(str((base_dir / ref.name).resolve()))
        ref = decl.ref
    path = _abs_path(ref)
    text = _quote(path) if path else None
    if text is None:
        repo, rev = _hub(ref)
        text = f"hf({_quote(repo)}" + (f", revision={_quote(rev)})" if rev else ")")
    lora = getattr(ref, "lora", None)
    return text + (f" + {_mf_ref(lora, config, base_dir)}" if lora is not None else "")


def _yaml_ref(ref, config: EvolveConfig, base_dir: Path) -> str:
    if isinstance(ref, Sym):
        decl = _decls(config).get(ref.name)
        if decl is None:
            return str((base_dir / ref.name).resolve())
        ref = decl.ref
    path = _abs_path(ref)
    if path is None:
        repo, rev = _hub(ref)
        path = repo + (f"@{rev}" if rev else "")
    lora = getattr(ref, "lora", None)
    return path + (f"+{_yaml_ref(lora, config, base_dir)}" if lora is not None else "")


def _used_models(target: Target) -> list[str]:
    names: list[str] = []
    sources = list(target.sources) + [s for sl in target.slices for s in sl.sources]
    refs = [s.ref for s in sources] + [p.value for p in target.params if p.name == "base"]
    refs += [p.value for sl in target.slices for p in sl.params if p.name == "base"]
    refs += [
        p.value
        for p in target.params
        if p.name == "tokenizer_source" and not (isinstance(p.value, Sym) and p.value.name in ("base", "union"))
    ]
    for r in refs:
        if isinstance(r, Sym) and r.name not in names:
            names.append(r.name)
    return names


# ---- Mergefile text -------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Sym):
        return v.name
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} in a Mergefile")


def _param(p: Param) -> str:
    filt = ""
    if p.filter is not None:
        filt = f"[{p.filter}]" if _NAME.match(p.filter) and p.filter not in _KEYWORDS else f"[{_quote(p.filter)}]"
    return f"{p.name}{filt}={_value(p.value)}"


def _source(s: Source) -> str:
    assert isinstance(s.ref, Sym)
    rng = f"[{s.layers[0]}:{s.layers[1]}]" if s.layers else ""
    return " ".join([s.ref.name + rng] + [_param(p) for p in s.params])


def render_mergefile(config: EvolveConfig, target: Target, header: Iterable[str] = (), name: str = FINAL) -> str:
    """A self-contained Mergefile building ``target`` as ``name`` (next to the file)."""
    base_dir = Path(config.path).resolve().parent
    lines = [f"# {h}" for h in header]
    for m in _used_models(target):
        lines.append(f"model {m} = {_mf_ref(Sym(m), config, base_dir)}")
    settings = [p for p in target.params if p.name == "base"]
    rest = [p for p in target.params if p.name != "base"]
    call = "(" + ", ".join(_param(p) for p in settings) + ")" if settings else ""
    lines += ["", f"{name}: {target.method}{call} {{"]
    lines += [f"    {p.name} = {_value(p.value)}" for p in rest]
    for s in target.sources:
        lines.append(f"    {_source(s)}")
    for sl in target.slices:
        lines.append("    slice {")
        lines += [f"        {_source(s)}" for s in sl.sources]
        lines += [f"        {_param(p)}" for p in sl.params]
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- mergekit YAML --------------------------------------------------------------------------


def _yaml_params(params: Iterable[Param]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in params:
        value = list(p.value) if isinstance(p.value, tuple) else p.value
        if isinstance(value, Sym):
            value = value.name
        if p.filter is None and p.name not in out:
            out[p.name] = value
            continue
        entries = out.get(p.name)
        if not isinstance(entries, list) or (entries and not isinstance(entries[0], dict)):
            entries = []
        entries.append({"filter": p.filter, "value": value})
        out[p.name] = entries
    return out


def render_mergekit(config: EvolveConfig, target: Target) -> str:
    """The candidate as a mergekit YAML config (``mergekit-yaml best_config.yaml OUT``)."""
    import yaml

    base_dir = Path(config.path).resolve().parent

    def ref(sym: Sym) -> str:
        return _yaml_ref(sym, config, base_dir)

    doc: dict[str, Any] = {"merge_method": target.method}
    top: dict[str, Any] = {}
    for p in target.params:
        if p.name == "base":
            doc["base_model"] = ref(p.value)
        elif p.name == "dtype":
            doc["dtype"] = p.value.name if isinstance(p.value, Sym) else p.value
        elif p.name == "tokenizer_source":
            v = p.value
            doc["tokenizer_source"] = v.name if v.name in ("base", "union") else ref(v)
        else:
            top[p.name] = p.value

    def src(s: Source, with_range: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"model": ref(s.ref)}
        if with_range and s.layers:
            d["layer_range"] = list(s.layers)
        if s.params:
            d["parameters"] = _yaml_params(s.params)
        return d

    if target.slices:
        slices = []
        for sl in target.slices:
            entry: dict[str, Any] = {"sources": [src(s, True) for s in sl.sources]}
            for p in sl.params:
                if p.name == "base":
                    entry["base_model"] = ref(p.value)
            params = _yaml_params(p for p in sl.params if p.name != "base")
            if params:
                entry["parameters"] = params
            slices.append(entry)
        doc["slices"] = slices
    else:
        doc["models"] = [src(s, False) for s in target.sources]
    if top:
        doc["parameters"] = top
    return yaml.safe_dump(doc, sort_keys=False)


# ---- plot -----------------------------------------------------------------------------------


def write_plot(path: Path, history: list[dict[str, Any]], title: str = "evolve") -> None:
    """Score of every evaluation (dots) and the best so far (line), as a PNG (Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - the evolve extra installs it
        return
    xs = [h["n"] for h in history if h.get("score") is not None]
    ys = [h["score"] for h in history if h.get("score") is not None]
    best, run = [], None
    for y in ys:
        run = y if run is None or y > run else run
        best.append(run)
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.subplots()
    ax.scatter(xs, ys, s=14, alpha=0.6, label="candidate")
    ax.step(xs, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if xs:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
