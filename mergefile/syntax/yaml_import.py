"""mergekit YAML config -> one :class:`Target` of the recipe AST.

Strict where mergekit is lax: mergekit silently ignores unknown keys (a typo like ``weigths:``
merges with defaults), so here every unknown key is a located error with a "did you mean".
Nodes are read with ``yaml.compose`` so every error carries the YAML line and column.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mergefile.errors import ConfigError, Loc, MergefileSyntaxError, did_you_mean
from mergefile.syntax.ast import AutoRef, Param, Slice, Source, Sym, Target, Value

TOP_KEYS = (
    "merge_method", "models", "slices", "base_model", "parameters",
    "dtype", "out_dtype", "tokenizer_source", "chat_template",
)  # fmt: skip
NOT_YET = ("modules", "tokenizer", "name")  # valid mergekit, not imported yet
MODEL_KEYS = ("model", "parameters")
SLICE_KEYS = ("sources", "parameters", "base_model", "residual_weight")
SOURCE_KEYS = ("model", "layer_range", "parameters")
COND_KEYS = ("filter", "value")
_SCALAR_PARAMS = ("dtype", "out_dtype", "tokenizer_source", "chat_template")


_Pair = tuple[Node, Node]  # (key node, value node)


class _Reader:
    """Walks composed YAML nodes, building AST values with locations."""

    def __init__(self, path: str, loader: yaml.SafeLoader):
        self.path, self.loader = path, loader
        self.base_dir = os.path.dirname(path) or "."

    def loc(self, node: Node) -> Loc:
        return Loc(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def scalar(self, node: Node, what: str) -> object:
        if not isinstance(node, ScalarNode):
            raise ConfigError(f"{what} must be a single value", self.loc(node))
        try:
            value = self.loader.construct_object(node, deep=True)
        except Exception as e:  # noqa: BLE001 - a tag's own constructor failed ("!!int x")
            raise ConfigError(f"bad value for {what}: {e}", self.loc(node)) from None
        if value is not None and not isinstance(value, (str, int, float)):
            shown = type(value).__name__
            raise ConfigError(f"unsupported {shown} value for {what}", self.loc(node))
        return value

    def string(self, node: Node, what: str) -> str:
        value = self.scalar(node, what)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{what} must be a non-empty string, got {value!r}", self.loc(node))
        return value

    def mapping(self, node: Node, allowed: tuple[str, ...], what: str) -> dict[str, _Pair]:
        """Key -> (key node, value node); unknown or repeated keys are errors."""
        if not isinstance(node, MappingNode):
            raise ConfigError(f"{what} must be a mapping of keys to values", self.loc(node))
        out: dict[str, _Pair] = {}
        for knode, vnode in node.value:
            key = self.scalar(knode, "a key")
            if not isinstance(key, str) or key not in allowed:
                raise self.unknown_key(knode, str(key), allowed, what)
            if key in out:
                raise ConfigError(f"duplicate key '{key}' in {what}", self.loc(knode))
            out[key] = (knode, vnode)
        return out

    def unknown_key(
        self, knode: Node, key: str, allowed: tuple[str, ...], what: str
    ) -> ConfigError:
        if what == "the config" and key in NOT_YET:
            return ConfigError(f"'{key}' is not supported by the YAML import yet", self.loc(knode))
        hint = did_you_mean(key, allowed) or "known: " + ", ".join(allowed)
        return ConfigError(f"unknown key '{key}' in {what}", self.loc(knode), hint)

    def sequence(self, node: Node, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise ConfigError(f"{what} must be a list", self.loc(node))
        return list(node.value)

    def ref(self, node: Node, what: str) -> AutoRef:
        return AutoRef(self.string(node, what), self.base_dir, self.loc(node))

    # -- parameters --
    def params(self, node: Node, what: str) -> tuple[Param, ...]:
        """``parameters:`` mapping -> Params; conditionals give one Param per entry."""
        if not isinstance(node, MappingNode):
            raise ConfigError(f"parameters of {what} must be a mapping", self.loc(node))
        out: list[Param] = []
        for knode, vnode in node.value:
            name = self.string(knode, "a parameter name")
            out.extend(self.param_entries(name, knode, vnode))
        seen: set[tuple[str, str | None]] = set()
        for p in out:
            if (p.name, p.filter) in seen:
                raise ConfigError(f"duplicate parameter '{p.name}' in {what}", p.loc)
            seen.add((p.name, p.filter))
        return tuple(out)

    def param_entries(self, name: str, knode: Node, vnode: Node) -> list[Param]:
        if isinstance(vnode, MappingNode):
            return [self.conditional(name, vnode)]
        if isinstance(vnode, SequenceNode):
            items = vnode.value
            if not items:
                raise ConfigError(f"parameter '{name}' is an empty list", self.loc(vnode))
            if all(isinstance(i, MappingNode) for i in items):
                return self.conditionals(name, items)
            if any(isinstance(i, MappingNode) for i in items):
                raise ConfigError(
                    f"parameter '{name}' mixes conditionals ({{filter, value}}) and plain values",
                    self.loc(vnode),
                )
        return [Param(name, self.value(vnode, name), None, self.loc(knode))]

    def conditionals(self, name: str, items: list[Node]) -> list[Param]:
        """A conditional list, in order, up to its first catch-all entry.

        mergekit takes the first matching entry, so entries after a catch-all (no filter or
        ``"*"``) never apply; the AST gives filtered entries priority over the unfiltered one
        whatever their order, so dropping the dead entries keeps mergekit's result.
        """
        out: list[Param] = []
        for item in items:
            out.append(self.conditional(name, item))
            if out[-1].filter is None:
                break
        return out

    def conditional(self, name: str, node: MappingNode) -> Param:
        keys = self.mapping(node, COND_KEYS, f"a conditional value of '{name}'")
        if "value" not in keys:
            raise ConfigError(f"conditional for '{name}' has no 'value'", self.loc(node))
        filt = None
        if "filter" in keys:
            filt = self.string(keys["filter"][1], "filter")
            filt = None if filt == "*" else filt
        return Param(name, self.value(keys["value"][1], name), filt, self.loc(node))

    def value(self, node: Node, name: str) -> Value:
        """Scalar -> itself; list -> tuple (a gradient)."""
        if isinstance(node, SequenceNode):
            if not node.value:
                raise ConfigError(f"parameter '{name}' is an empty list", self.loc(node))
            return tuple(self.scalar(i, f"an element of '{name}'") for i in node.value)
        value = self.scalar(node, f"parameter '{name}'")
        if value is None:
            raise ConfigError(f"parameter '{name}' has no value", self.loc(node))
        return value  # type: ignore[return-value]

    # -- models and slices --
    def model_source(self, node: Node) -> Source:
        keys = self.mapping(node, MODEL_KEYS, "a models entry")
        if "model" not in keys:
            raise ConfigError("a models entry needs 'model'", self.loc(node))
        params = self.params(keys["parameters"][1], "a model") if "parameters" in keys else ()
        return Source(self.ref(keys["model"][1], "model"), None, params, self.loc(node))

    def slice_source(self, node: Node) -> Source:
        keys = self.mapping(node, SOURCE_KEYS, "a slice source")
        for need in ("model", "layer_range"):
            if need not in keys:
                raise ConfigError(f"a slice source needs '{need}'", self.loc(node))
        params = self.params(keys["parameters"][1], "a source") if "parameters" in keys else ()
        layers = self.layer_range(keys["layer_range"][1])
        return Source(self.ref(keys["model"][1], "model"), layers, params, self.loc(node))

    def layer_range(self, node: Node) -> tuple[int, int]:
        items = self.sequence(node, "layer_range")
        values = [self.scalar(i, "a layer_range bound") for i in items]
        if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ConfigError(
                f"layer_range must be two integers [start, end], got {values}", self.loc(node)
            )
        start, end = values
        if start < 0 or end <= start:
            raise ConfigError(
                f"layer_range [{start}, {end}] is empty or negative: need 0 <= start < end",
                self.loc(node),
            )
        return (start, end)

    def slice(self, node: Node) -> Slice:
        keys = self.mapping(node, SLICE_KEYS, "a slice")
        if "sources" not in keys:
            raise ConfigError("a slice needs 'sources'", self.loc(node))
        sources = tuple(self.slice_source(s) for s in self.sequence(keys["sources"][1], "sources"))
        if not sources:
            raise ConfigError("a slice needs at least one source", self.loc(keys["sources"][1]))
        params: tuple[Param, ...] = ()
        if "base_model" in keys:
            knode, vnode = keys["base_model"]
            params = (Param("base", self.ref(vnode, "base_model"), None, self.loc(knode)),)
        if "parameters" in keys:
            params += self.params(keys["parameters"][1], "a slice")
        return Slice(sources, params, self.loc(node))


def _scalar_value(r: _Reader, name: str, vnode: Node) -> Value:
    """dtype words read like Mergefile bare words (Sym); a tokenizer source may be a model."""
    text = r.string(vnode, name)
    if name in ("dtype", "out_dtype"):
        return Sym(text, r.loc(vnode))
    if name == "tokenizer_source":
        if text in ("union", "base"):
            return Sym(text, r.loc(vnode))
        return AutoRef(text, r.base_dir, r.loc(vnode))
    return text


def _top_params(r: _Reader, keys: dict[str, _Pair]) -> tuple[Param, ...]:
    """Target params in a fixed order: base, parameters..., then the scalar keys.

    A fixed order (not the YAML's key order) makes two configs that differ only in key order
    give equal Targets.
    """
    out: list[Param] = []
    if "base_model" in keys:
        knode, vnode = keys["base_model"]
        out.append(Param("base", r.ref(vnode, "base_model"), None, r.loc(knode)))
    if "parameters" in keys:
        out.extend(r.params(keys["parameters"][1], "the config"))
    for name in _SCALAR_PARAMS:
        if name not in keys:
            continue
        knode, vnode = keys[name]
        out.append(Param(name, _scalar_value(r, name, vnode), None, r.loc(knode)))
    names = [p.name for p in out if p.filter is None]
    for name in ("base",) + _SCALAR_PARAMS:
        if names.count(name) > 1:
            where = r.loc(keys["parameters"][0])
            raise ConfigError(f"'{name}' is set both as a key and in parameters", where)
    return tuple(out)


def yaml_text_to_target(text: str, path: str, target_name: str) -> Target:
    """Convert mergekit YAML text to a Target named ``target_name``.

    ``path`` is used for locations and as the base directory of model references.

    Raises:
        MergefileSyntaxError: the YAML does not parse.
        ConfigError: unknown keys, missing ``merge_method``, bad ``layer_range``, ...
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError("the YAML config is empty", Loc(path, 1, 1))
        r = _Reader(path, loader)
        keys = r.mapping(root, TOP_KEYS, "the config")
        if "merge_method" not in keys:
            raise ConfigError("the YAML config has no 'merge_method'", r.loc(root))
        present = [k for k in ("models", "slices") if k in keys]
        if len(present) != 1:
            why = "both" if present else "neither"
            raise ConfigError(
                f"exactly one of 'models' or 'slices' is required ({why} given)", r.loc(root)
            )
        mnode = keys["merge_method"][1]
        method = r.string(mnode, "merge_method")
        sources: tuple[Source, ...] = ()
        slices: tuple[Slice, ...] = ()
        if "models" in keys:
            sources = tuple(r.model_source(n) for n in r.sequence(keys["models"][1], "models"))
        else:
            slices = tuple(r.slice(n) for n in r.sequence(keys["slices"][1], "slices"))
        params = _top_params(r, keys)
        return Target(
            target_name, method, params, sources, slices, (),
            Loc(path, 1, 1), r.loc(mnode), text,
        )  # fmt: skip
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = Loc(path, mark.line + 1, mark.column + 1) if mark else Loc(path, 1, 1)
        raise MergefileSyntaxError(f"YAML syntax error: {e.problem or e}", loc) from None
    except yaml.YAMLError as e:
        raise MergefileSyntaxError(f"YAML error: {e}", Loc(path, 1, 1)) from None
    finally:
        loader.dispose()


def load_yaml_target(path: str | os.PathLike[str], target_name: str) -> Target:
    """Read a mergekit YAML config file as one Target (model paths relative to its folder).

    Args:
        path: the YAML file; its directory becomes every ``AutoRef.base_dir``.
        target_name: the name the Target gets (e.g. ``out/x``).

    Returns:
        The Target, with ``origin`` set to the YAML text.

    Raises:
        ConfigError: the file cannot be read, or the config is invalid (unknown key, ...).
        MergefileSyntaxError: the YAML does not parse.

    Example:
        >>> load_yaml_target("merge.yml", "out/x").method  # doctest: +SKIP
        'ties'
    """
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read YAML config '{path}': {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"YAML config '{path}' is not UTF-8 text ({e.reason})") from None
    return yaml_text_to_target(text, path, target_name)
