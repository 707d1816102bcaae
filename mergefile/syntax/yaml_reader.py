"""Composed YAML nodes -> AST pieces, every error located (``file:line:col``).

The document-level schema (which keys a config has, the tokenizer block, multi-document files)
lives in ``yaml_import.py``; this module reads the parts mergekit repeats at every level:
key checks, parameters (scalars, gradients, ``{filter, value}`` conditionals), model
references, layer ranges, ``models:`` entries and slices.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mergefile.errors import ConfigError, Loc
from mergefile.syntax.ast import AutoRef, Param, Slice, Source, Sym, Value
from mergefile.syntax.yaml_leniency import (
    WarnOnce,
    belongs,
    coerce,
    likely_typo,
    numeric,
    type_problem,
)

if TYPE_CHECKING:
    from mergefile.methods.base import Method

MODEL_KEYS = ("model", "parameters")
SLICE_KEYS = ("sources", "parameters", "base_model", "residual_weight")
SOURCE_KEYS = ("model", "layer_range", "parameters")
COND_KEYS = ("filter", "value")
REF_KEYS = ("model", "lora", "override_architecture")  # mergekit's dict form of a reference
PATH_KEYS = ("path", "revision")

Pair = tuple[Node, Node]  # (key node, value node)
Warn = Callable[[str], None]
ModelRef = AutoRef | Sym  # Sym: an earlier stage of a multi-document file


def warn_stderr(message: str) -> None:
    """Default sink for ``--lenient`` warnings."""
    print(f"mergebuild: warning: {message}", file=sys.stderr)


def split_model_string(text: str) -> tuple[str, str | None, str | None, str | None]:
    """``path[@rev][+lora[@rev]]`` -> (path, revision, lora, lora_revision); ValueError if bad."""
    parts = text.split("+")
    if len(parts) > 2:
        raise ValueError("more than one '+lora'")
    out: list[str | None] = []
    for part, what in zip(parts, ("model", "LoRA")):
        if part.count("@") > 1:
            raise ValueError(f"more than one '@revision' in the {what} part")
        path, at, rev = part.partition("@")
        if not path.strip():
            raise ValueError(f"the {what} path is empty")
        if at and not rev:
            raise ValueError(f"empty revision after '@' in the {what} part")
        out += [path, rev or None]
    out += [None] * (4 - len(out))
    return out[0], out[1], out[2], out[3]  # type: ignore[return-value]


class YamlReader:
    """Reads one YAML document's nodes into AST values with locations.

    ``stages`` maps earlier document names (mergekit-multi) to their target names, so a
    reference to a stage becomes a :class:`Sym` naming that target.
    """

    def __init__(
        self,
        path: str,
        loader: yaml.SafeLoader,
        *,
        lenient: bool = False,
        warn: Warn | None = None,
        stages: dict[str, str] | None = None,
        work_dir: str | None = None,
        ignored: WarnOnce | None = None,
    ):
        self.path, self.loader = path, loader
        # mergekit reads relative model paths from the working directory (syntax/model_paths.py)
        self.base_dir = os.path.abspath(work_dir or os.getcwd())
        self.lenient, self.warn = lenient, warn or warn_stderr
        self.ignored = ignored or WarnOnce(self.warn)  # shared by a file's documents
        self.stages = stages or {}
        self.method: Method | None = None

    def use_method(self, name: str, loc: Loc) -> None:
        """Check the method name now; parameters read later are checked against it."""
        from mergefile.methods.registry import get_method

        self.method = get_method(name, loc)

    def loc(self, node: Node) -> Loc:
        return Loc(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    # -- scalars and containers --
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
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{what} must be a finite number, got {value}", self.loc(node))
        return value

    def string(self, node: Node, what: str) -> str:
        value = self.scalar(node, what)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{what} must be a non-empty string, got {value!r}", self.loc(node))
        return value

    def integer(self, node: Node, what: str, minimum: int = 0) -> int:
        value = self.scalar(node, what)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}", self.loc(node))
        return value

    def boolean(self, node: Node, what: str) -> bool:
        value = self.scalar(node, what)
        if not isinstance(value, bool):
            raise ConfigError(f"{what} must be true or false, got {value!r}", self.loc(node))
        return value

    def flat(self, node: MappingNode) -> MappingNode:
        """``node`` with YAML merge keys (``<<: *defaults``) applied, as PyYAML's loader does:
        a merged key is overridden by a later one; keys written twice stay (an error later)."""
        merges = any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value)
        if not merges:
            return node
        explicit = sum(k.tag != "tag:yaml.org,2002:merge" for k, _ in node.value)
        self.loader.flatten_mapping(node)
        merged, own = node.value[: len(node.value) - explicit], node.value[len(node.value) - explicit :]
        later: set[object] = {getattr(k, "value", None) for k, _ in own}
        kept = []
        for k, v in reversed(merged):
            if getattr(k, "value", None) not in later:
                kept.append((k, v))
                later.add(getattr(k, "value", None))
        node.value = kept[::-1] + own
        return node

    def mapping(self, node: Node, allowed: tuple[str, ...], what: str) -> dict[str, Pair]:
        """Key -> (key node, value node). Unknown keys warn and are dropped (mergekit ignores
        them); a likely typo of an allowed key stops (syntax/yaml_leniency.py)."""
        if not isinstance(node, MappingNode):
            raise ConfigError(f"{what} must be a mapping of keys to values", self.loc(node))
        self.flat(node)
        out: dict[str, Pair] = {}
        for knode, vnode in node.value:
            key = self.scalar(knode, "a key")
            if key in out:
                raise ConfigError(f"duplicate key '{key}' in {what}", self.loc(knode))
            if not isinstance(key, str) or key not in allowed:
                self.unknown_key(knode, str(key), allowed, what)
                continue
            out[key] = (knode, vnode)
        return out

    def unknown_key(self, knode: Node, key: str, allowed: tuple[str, ...], what: str) -> None:
        """A likely typo of an allowed key: an error (a warning under --lenient); any other
        key: a warning, once, saying where it belongs; either way it is dropped, as in mergekit."""
        typo = likely_typo(key, allowed)
        if typo is not None:
            err = ConfigError(f"unknown key '{key}' in {what}", self.loc(knode), f"did you mean '{typo}'?")
            if not self.lenient:
                raise err
            self.warn(f"{err.render()}; ignored (--lenient)")
            return
        params = [q.name for q in self.method.params] if self.method is not None else []
        where = "top" if what == "the config" else what
        hint = belongs(key, where, self.method.name if self.method else None, allowed if where != "top" else (), params)
        self.ignored(
            (what, key),
            f"{self.loc(knode)}: unknown key '{key}' in {what}, ignored"
            f" as mergekit ignores it" + (f" ({hint})" if hint else ""),
        )

    def mapping_items(self, node: Node, what: str) -> list[Pair]:
        """A mapping whose keys are the user's (token strings, module names), each key once."""
        if not isinstance(node, MappingNode):
            raise ConfigError(f"{what} must be a mapping", self.loc(node))
        self.flat(node)
        seen: set[object] = set()
        for knode, _ in node.value:
            key = self.scalar(knode, "a key")
            if key in seen:
                raise ConfigError(f"duplicate key '{key}' in {what}", self.loc(knode))
            seen.add(key)
        return list(node.value)

    def sequence(self, node: Node, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise ConfigError(f"{what} must be a list", self.loc(node))
        return list(node.value)

    # -- model references --
    def ref(self, node: Node, what: str) -> ModelRef:
        """A model reference: ``path_or_id[@rev][+lora[@rev]]``, its dict form, or a stage name."""
        if isinstance(node, MappingNode):
            return self.dict_ref(node, what)
        text = self.string(node, what)
        try:
            path, rev, lora, lora_rev = split_model_string(text)
        except ValueError as e:
            raise ConfigError(
                f"bad model reference '{text}': {e}",
                self.loc(node),
                "expected path_or_hub_id[@revision][+lora_path[@revision]]",
            ) from None
        return self.make_ref(path, rev, lora, lora_rev, node)

    def make_ref(
        self, path: str, rev: str | None, lora: str | None, lora_rev: str | None, node: Node, arch: str | None = None
    ) -> ModelRef:
        loc = self.loc(node)
        if path in self.stages:
            if rev or lora:
                raise ConfigError(
                    f"'{path}' names an earlier stage of this file; it takes no '@revision' or '+lora'", loc
                )
            if arch:
                raise ConfigError(
                    f"'{path}' names an earlier stage of this file; it takes no"
                    " override_architecture (its output has the class of its inputs)",
                    loc,
                )
            return Sym(self.stages[path], loc)
        lora_ref = None
        if lora is not None:
            lora_ref = AutoRef(_join(lora, lora_rev), self.base_dir, loc)
        return AutoRef(_join(path, rev), self.base_dir, loc, lora_ref, arch)

    def dict_ref(self, node: MappingNode, what: str) -> ModelRef:
        """``{model: {path, revision} | str, lora: ..., override_architecture: ...}``."""
        keys = self.mapping(node, REF_KEYS, f"the {what} reference")
        if "model" not in keys:
            raise ConfigError(f"the {what} reference needs 'model'", self.loc(node))
        arch = None
        if "override_architecture" in keys:  # the class the model is read as (checked when planning)
            arch = self.string(keys["override_architecture"][1], "override_architecture")
        path, rev = self.path_part(keys["model"][1], what)
        lora, lora_rev = self.path_part(keys["lora"][1], "lora") if "lora" in keys else (None, None)
        return self.make_ref(path, rev, lora, lora_rev, node, arch)

    def path_part(self, node: Node, what: str) -> tuple[str, str | None]:
        if isinstance(node, MappingNode):
            keys = self.mapping(node, PATH_KEYS, f"the {what} path")
            if "path" not in keys:
                raise ConfigError(f"the {what} path needs 'path'", self.loc(node))
            rev = self.string(keys["revision"][1], "revision") if "revision" in keys else None
            return self.string(keys["path"][1], "path"), rev
        text = self.string(node, what)
        if "+" in text or text.count("@") > 1 or text.endswith("@"):
            raise ConfigError(f"bad model path '{text}'", self.loc(node), "expected path[@revision]")
        path, _, rev = text.partition("@")
        return path, rev or None

    # -- parameters --
    def params(self, node: Node, what: str) -> tuple[Param, ...]:
        """``parameters:`` mapping -> Params; conditionals give one Param per entry."""
        if isinstance(node, ScalarNode) and self.scalar(node, "parameters") is None:
            return ()  # "parameters:" left empty: mergekit reads it as none
        if not isinstance(node, MappingNode):
            raise ConfigError(f"parameters of {what} must be a mapping", self.loc(node))
        self.flat(node)
        out: list[Param] = []
        for knode, vnode in node.value:
            name = self.string(knode, "a parameter name")
            out.extend(self.param_entries(name, knode, vnode))
        seen: set[tuple[str, str | None]] = set()
        for p in out:
            if (p.name, p.filter) in seen:
                raise ConfigError(f"duplicate parameter '{p.name}' in {what}", p.loc)
            seen.add((p.name, p.filter))
        return tuple(q for q in (self.known_param(p) for p in out) if q is not None)

    def known_param(self, p: Param) -> Param | None:
        """The parameter with its value coerced as mergekit coerces it, or None when the method
        does not use it (a warning; a likely typo of one it uses stops, see ``unknown_key``)."""
        if self.method is None:
            return p
        spec = self.method.param(p.name)
        if spec is None:
            names = [q.name for q in self.method.params]
            typo = likely_typo(p.name, names)
            if typo is not None:
                err = ConfigError(
                    f"unknown parameter '{p.name}' for {self.method.name}", p.loc, f"did you mean '{typo}'?"
                )
                if not self.lenient:
                    raise err
                self.warn(f"{err.render()}; ignored (--lenient)")
                return None
            hint = belongs(p.name, "parameters", self.method.name)
            known = ", ".join(names) or "none"
            self.ignored(
                ("parameters", p.name),
                f"{p.loc or self.path}: parameter '{p.name}' ignored as mergekit ignores it ({hint}; it uses: {known})",
            )
            return None
        problem = type_problem(spec, p.value)
        if problem:
            raise ConfigError(f"parameter '{p.name}' of {self.method.name} {problem}", p.loc)
        value, _ = coerce(spec.type, p.value) if spec.type in (float, int, bool) else (p.value, None)
        return p if value == p.value and type(value) is type(p.value) else Param(p.name, value, p.filter, p.loc)

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
        if "filter" in keys and self.scalar(keys["filter"][1], "filter") is not None:  # null: every tensor
            filt = self.string(keys["filter"][1], "filter")
            filt = None if filt == "*" else filt
        return Param(name, self.value(keys["value"][1], name), filt, self.loc(node))

    def value(self, node: Node, name: str) -> Value:
        """Scalar -> itself; a list -> tuple (a gradient: all numbers, or all booleans)."""
        if isinstance(node, SequenceNode):
            if not node.value:
                raise ConfigError(f"parameter '{name}' is an empty list", self.loc(node))
            items = [self.scalar(i, f"an element of '{name}'") for i in node.value]
            nums = [(isinstance(v, (int, float)) and not isinstance(v, bool)) or numeric(v) for v in items]
            if not all(nums) and not all(isinstance(v, bool) for v in items):
                i = nums.index(False)
                raise ConfigError(
                    f"gradient '{name}' must be a list of numbers, got {items[i]!r}",
                    self.loc(node.value[i]),
                    "e.g. [0, 0.5, 1]",
                )
            return tuple(items)
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
            raise ConfigError(f"layer_range must be two integers [start, end], got {values}", self.loc(node))
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
        if "residual_weight" in keys:  # parsed and unused by mergekit: checked, then dropped
            value = self.scalar(keys["residual_weight"][1], "residual_weight")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(
                    f"residual_weight must be a number, got {value!r}", self.loc(keys["residual_weight"][1])
                )
        return Slice(sources, params, self.loc(node))

    def inputs(self, keys: dict[str, Pair], where: str) -> tuple[tuple[Source, ...], tuple[Slice, ...]]:
        """``models:`` or ``slices:`` (exactly one of them) of a config or a module."""
        if "models" in keys:
            nodes = self.sequence(keys["models"][1], "models")
            if not nodes:
                raise ConfigError("'models' is empty", self.loc(keys["models"][1]))
            return tuple(self.model_source(n) for n in nodes), ()
        nodes = self.sequence(keys["slices"][1], "slices")
        if not nodes:
            raise ConfigError("'slices' is empty", self.loc(keys["slices"][1]))
        return (), tuple(self.slice(n) for n in nodes)


def _join(path: str, rev: str | None) -> str:
    return f"{path}@{rev}" if rev else path
