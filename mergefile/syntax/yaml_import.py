"""mergekit YAML configs -> Targets of the recipe AST (the whole schema, multi-document files).

A config that mergekit builds builds here: keys and parameters mergekit ignores warn once and
are dropped, values are coerced as mergekit's schema coerces them; only a likely typo of a key
or parameter that is used (``weigths:``, which mergekit would silently merge with defaults)
stops, with a "did you mean" (``lenient=True`` makes those warnings too). See
``syntax/yaml_leniency.py``.
Nodes are read with ``yaml.compose`` so every error carries the YAML line and column.

A file of several YAML documents is a ``mergekit-multi`` chain: every document but the last has
a ``name:``; later documents use earlier names as models. Each named document becomes the target
``PREFIX + name`` and the last one the requested target, so the build graph rebuilds a stage
only when it or a stage it uses changed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node

from mergefile.errors import ConfigError, Loc, MergefileSyntaxError, unknown
from mergefile.syntax.ast import Module, Param, Sym, Target, Value
from mergefile.syntax.yaml_leniency import WarnOnce
from mergefile.syntax.yaml_reader import Pair, Warn, YamlReader, warn_stderr

TOP_KEYS = (
    "merge_method",
    "models",
    "slices",
    "modules",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "name",
    "seed",
)  # ("seed" is a mergebuild extension: mergekit-yaml's --random-seed)
INPUT_KEYS = ("models", "slices", "modules")
MODULE_KEYS = ("models", "slices", "parameters")
TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
TOKEN_KEYS = ("source", "force")
TOKEN_SOURCE_KEYS = ("kind", "model", "token", "token_id")
TOKEN_KINDS = ("model_token", "zero")
# The tokenizer block becomes these target parameters (read by plan/tokenizer_recipe.py):
# tokenizer_source = union|base|MODEL; pad_to_multiple_of = N; token["<tok>"] = MODEL | zero |
# [MODEL, "<other>"] | [MODEL, ID] | auto (no source given); token_force["<tok>"] = true.
TOKENIZER_PARAMS = ("pad_to_multiple_of", "token", "token_force")
_SCALAR_KEYS = ("dtype", "out_dtype", "tokenizer_source", "chat_template")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)*\Z")


def stage_prefix(target_name: str) -> str:
    """Default folder prefix of a multi-document file's stages: the requested target's folder."""
    head = target_name.rstrip("/").rpartition("/")[0]
    return head + "/" if head else ""


# ---- one document ---------------------------------------------------------------------------


def _scalar_value(r: YamlReader, name: str, vnode: Node) -> Value:
    """dtype words read like Mergefile bare words (Sym); a tokenizer source may be a model."""
    if name == "tokenizer_source":
        if isinstance(vnode, MappingNode):
            return r.ref(vnode, name)
        text = r.string(vnode, name)
        return Sym(text, r.loc(vnode)) if text in ("union", "base") else r.ref(vnode, name)
    text = r.string(vnode, name)
    return Sym(text, r.loc(vnode)) if name in ("dtype", "out_dtype") else text


def _token_source(r: YamlReader, node: Node) -> Value:
    """A token's ``source``: a model, ``{kind: zero}`` or ``{kind: model_token, ...}``."""
    if not isinstance(node, MappingNode) or "kind" not in {k.value for k, _ in node.value}:
        return r.ref(node, "token source")
    keys = r.mapping(node, TOKEN_SOURCE_KEYS, "a token source")
    kind = r.string(keys["kind"][1], "kind")
    if kind not in TOKEN_KINDS:
        raise unknown("token source kind", kind, TOKEN_KINDS, r.loc(keys["kind"][1]))
    if kind == "zero":
        extra = [k for k in keys if k != "kind"]
        if extra:
            raise ConfigError(f"'{extra[0]}' does not go with kind: zero", r.loc(keys[extra[0]][0]))
        return Sym("zero", r.loc(node))
    if "model" not in keys or ("token" in keys) == ("token_id" in keys):
        raise ConfigError("kind: model_token needs 'model' and one of 'token' or 'token_id'", r.loc(node))
    which = r.string(keys["token"][1], "token") if "token" in keys else r.integer(keys["token_id"][1], "token_id")
    return (r.ref(keys["model"][1], "model"), which)


def _tokenizer_params(r: YamlReader, knode: Node, vnode: Node) -> list[Param]:
    """The ``tokenizer:`` block as target parameters (see TOKENIZER_PARAMS)."""
    keys = r.mapping(vnode, TOKENIZER_KEYS, "the tokenizer block")
    source: Value = Sym("union", r.loc(knode))  # mergekit's default source
    if "source" in keys:
        source = _scalar_value(r, "tokenizer_source", keys["source"][1])
    out = [Param("tokenizer_source", source, None, r.loc(keys.get("source", (knode,))[0]))]
    if "pad_to_multiple_of" in keys:
        k, v = keys["pad_to_multiple_of"]
        out.append(Param("pad_to_multiple_of", r.integer(v, "pad_to_multiple_of", 1), None, r.loc(k)))
    forced: list[Param] = []
    for tnode, cnode in r.mapping_items(keys["tokens"][1], "tokens") if "tokens" in keys else ():
        tok = r.string(tnode, "a token")
        if tok == "*":
            raise ConfigError("the token '*' cannot be configured here", r.loc(tnode))
        conf = r.mapping(cnode, TOKEN_KEYS, f"token {tok!r}")
        value: Value = _token_source(r, conf["source"][1]) if "source" in conf else Sym("auto", r.loc(tnode))
        out.append(Param("token", value, tok, r.loc(tnode)))
        if "force" in conf and r.boolean(conf["force"][1], "force"):
            forced.append(Param("token_force", True, tok, r.loc(conf["force"][0])))
    return out + forced


def _top_params(r: YamlReader, keys: dict[str, Pair]) -> tuple[Param, ...]:
    """Target params in a fixed order: settings (base, dtype, out_dtype, tokenizer_source,
    chat_template, seed), then ``parameters``, then the rest of the tokenizer block.

    A fixed order (not the YAML's key order) makes two configs that differ only in key order
    give equal Targets, and puts the settings first, where a Mergefile's call has them.
    """
    out: list[Param] = []
    if "base_model" in keys:
        knode, vnode = keys["base_model"]
        out.append(Param("base", r.ref(vnode, "base_model"), None, r.loc(knode)))
    tokenizer: list[Param] = []
    if "tokenizer" in keys:
        if "tokenizer_source" in keys:
            raise ConfigError(
                "'tokenizer_source' and 'tokenizer' cannot both be set",
                r.loc(keys["tokenizer"][0]),
                "use tokenizer: {source: ...}",
            )
        tokenizer = _tokenizer_params(r, *keys["tokenizer"])
    for name in _SCALAR_KEYS:
        if name in keys:
            knode, vnode = keys[name]
            out.append(Param(name, _scalar_value(r, name, vnode), None, r.loc(knode)))
        if name == "tokenizer_source":
            out.extend(tokenizer[:1])  # the block's source
    if "seed" in keys:
        knode, vnode = keys["seed"]
        out.append(Param("seed", r.integer(vnode, "seed"), None, r.loc(knode)))
    if "parameters" in keys:
        out.extend(r.params(keys["parameters"][1], "the config"))
    return tuple(out + tokenizer[1:])


def _exactly_one(r: YamlReader, keys: dict[str, Pair], choices: tuple[str, ...], node: Node) -> None:
    present = [k for k in choices if k in keys]
    if len(present) != 1:
        why = "neither" if not present else " and ".join(present) + " given"
        shown = " or ".join(f"'{c}'" for c in choices)
        raise ConfigError(f"exactly one of {shown} is required ({why})", r.loc(node))


def _modules(r: YamlReader, node: Node) -> tuple[Module, ...]:
    """``modules: {name: {models | slices, parameters}}`` (multi-module architectures)."""
    out = []
    for knode, vnode in r.mapping_items(node, "modules"):
        name = r.string(knode, "a module name")
        keys = r.mapping(vnode, MODULE_KEYS, f"module '{name}'")
        _exactly_one(r, keys, ("models", "slices"), vnode)
        sources, slices = r.inputs(keys, f"module '{name}'")
        params = r.params(keys["parameters"][1], f"module '{name}'") if "parameters" in keys else ()
        out.append(Module(name, sources, slices, params, r.loc(knode)))
    if not out:
        raise ConfigError("'modules' is empty", r.loc(node))
    return tuple(out)


def _document(r: YamlReader, root: Node, target_name: str, origin: str) -> Target:
    for knode, vnode in root.value if isinstance(root, MappingNode) else ():
        if getattr(knode, "value", None) == "merge_method":  # first: ignored top keys name their place
            r.use_method(r.string(vnode, "merge_method"), r.loc(vnode))
    if isinstance(root, MappingNode) and {"genome", "tasks"} & {getattr(k, "value", None) for k, _ in root.value}:
        raise ConfigError(
            "this is a mergekit-evolve configuration (genome:, tasks:), not a merge config",
            r.loc(root),
            f"run the search with: mergebuild evolve {r.path}; its best recipe is written as"
            " best_config.yaml (builds with --config) and best.mf",
        )
    keys = r.mapping(root, TOP_KEYS, "the config")
    if "merge_method" not in keys:
        raise ConfigError("the YAML config has no 'merge_method'", r.loc(root))
    _exactly_one(r, keys, INPUT_KEYS, root)
    mnode = keys["merge_method"][1]
    method = r.string(mnode, "merge_method")
    r.use_method(method, r.loc(mnode))
    modules: tuple[Module, ...] = ()
    if "modules" in keys:
        sources, slices, modules = (), (), _modules(r, keys["modules"][1])
    else:
        sources, slices = r.inputs(keys, "the config")
    params = _top_params(r, keys)
    return Target(
        target_name,
        method,
        params,
        sources,
        slices,
        (),
        r.loc(root),
        r.loc(mnode),
        origin,
        modules,
    )


# ---- files ----------------------------------------------------------------------------------


def _stage_name(r: YamlReader, root: Node) -> tuple[str | None, Loc | None]:
    """A document's ``name:`` (mergekit-multi), read before the rest."""
    if not isinstance(root, MappingNode):
        return None, None
    for knode, vnode in root.value:
        if getattr(knode, "value", None) == "name":
            name = r.string(vnode, "name")
            if not _NAME.match(name) or name.endswith("/"):
                raise ConfigError(
                    f"bad stage name '{name}'", r.loc(vnode), "letters, digits, '_', '.', '-' and '/' only"
                )
            return name, r.loc(vnode)
    return None, None


def _documents(text: str, path: str, loader: yaml.SafeLoader) -> list[Node]:
    docs = []
    while loader.check_node():
        node = loader.get_node()
        if node is not None and not (node.tag.endswith(":null") and node.value in ("", "~", "null")):
            docs.append(node)
    if not docs:
        raise ConfigError("the YAML config is empty", Loc(path, 1, 1))
    return docs


def yaml_text_to_targets(
    text: str,
    path: str,
    target_name: str,
    *,
    prefix: str | None = None,
    lenient: bool = False,
    warn: Warn | None = None,
    work_dir: str | None = None,
) -> tuple[Target, ...]:
    """Convert mergekit YAML text (one or several documents) to Targets, the requested one last.

    Args:
        text: the YAML; ``path`` names it in locations (and is the fallback folder of relative
            model paths, see ``syntax/model_paths.py``).
        target_name: the target the last document becomes (e.g. ``out/x``).
        prefix: stage targets are ``prefix + name`` (default: ``target_name``'s folder + ``/``).
        lenient: unknown keys and parameter names warn (through ``warn``) instead of failing.
        work_dir: the folder relative model paths are read from, as mergekit reads them from its
            working directory (default: the current directory; a Mergefile's folder for includes).

    Raises:
        MergefileSyntaxError: the YAML does not parse.
        ConfigError: unknown keys, wrong types, bad ``layer_range`` or model references, ...
    """
    prefix = stage_prefix(target_name) if prefix is None else prefix
    loader = yaml.SafeLoader(text)
    try:
        docs = _documents(text, path, loader)
        stages: dict[str, str] = {}
        out: list[Target] = []
        ignored = WarnOnce(warn or warn_stderr)
        for i, root in enumerate(docs):
            r = YamlReader(
                path, loader, lenient=lenient, warn=warn, stages=dict(stages), work_dir=work_dir, ignored=ignored
            )
            name, nloc = _stage_name(r, root)
            last = i == len(docs) - 1
            if not last:
                name = _check_stage(name, nloc, r.loc(root), stages, prefix, target_name)
            origin = text if len(docs) == 1 else text[root.start_mark.index : root.end_mark.index]
            tname = target_name if last else prefix + name
            out.append(_document(r, root, tname, origin))
            if not last:
                stages[name] = tname
        return tuple(out)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = Loc(path, mark.line + 1, mark.column + 1) if mark else Loc(path, 1, 1)
        raise MergefileSyntaxError(f"YAML syntax error: {e.problem or e}", loc) from None
    except yaml.YAMLError as e:
        raise MergefileSyntaxError(f"YAML error: {e}", Loc(path, 1, 1)) from None
    finally:
        loader.dispose()


def _check_stage(
    name: str | None, nloc: Loc | None, doc_loc: Loc, stages: dict[str, str], prefix: str, target_name: str
) -> str:
    if name is None:
        raise ConfigError(
            "in a multi-document file every document but the last needs a 'name:'",
            doc_loc,
            "later documents use it as a model",
        )
    if name in stages:
        raise ConfigError(f"duplicate stage name '{name}'", nloc)
    if prefix + name == target_name:
        raise ConfigError(
            f"stage '{name}' would be built at '{target_name}', the final target",
            nloc,
            "rename the stage or the target",
        )
    return name


def yaml_text_to_target(text: str, path: str, target_name: str, **options: object) -> Target:
    """A single-document config as one Target (see :func:`yaml_text_to_targets`)."""
    targets = yaml_text_to_targets(text, path, target_name, **options)  # type: ignore[arg-type]
    if len(targets) != 1:
        raise ConfigError(f"{path} holds {len(targets)} merge documents; expected one", Loc(path, 1, 1))
    return targets[0]


def read_yaml_text(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read YAML config '{path}': {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"YAML config '{path}' is not UTF-8 text ({e.reason})") from None


def load_yaml_targets(path: str | os.PathLike[str], target_name: str, **options: object) -> tuple[Target, ...]:
    """Read a mergekit YAML file as Targets, final last (model paths: see ``yaml_text_to_targets``).

    Example:
        >>> [t.name for t in load_yaml_targets("multi.yml", "out/final")]  # doctest: +SKIP
        ['out/math-code', 'out/final']
    """
    return yaml_text_to_targets(read_yaml_text(path), str(path), target_name, **options)  # type: ignore[arg-type]


def load_yaml_target(path: str | os.PathLike[str], target_name: str) -> Target:
    """Read a single-document mergekit YAML config file as one Target.

    Raises:
        ConfigError: the file cannot be read, or the config is invalid (unknown key, ...).
        MergefileSyntaxError: the YAML does not parse.

    Example:
        >>> load_yaml_target("merge.yml", "out/x").method  # doctest: +SKIP
        'ties'
    """
    return yaml_text_to_target(read_yaml_text(path), str(path), target_name)
