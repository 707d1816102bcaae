"""The tokenizer settings of a target, read from its parameters.

Mergefile syntax (mergekit's ``tokenizer_source`` / ``tokenizer:`` block, reference §2.6)::

    tokenizer = union                    # base | union | MODEL  (tokenizer_source is a synonym)
    pad_to_multiple_of = 64
    token["<|im_start|>"] = chat         # that token's row comes from model chat
    token["<|im_end|>"] = zero           # ... is zeros
    token["<think>"] = [chat, "<s>"]     # ... is chat's row of another token (or [chat, 5]: row 5)
    token["<tool>"] = auto               # only add the token; rows follow the default rules
    token_force["<|im_start|>"] = true   # use the rule even for models that have the token
    chat_template = chatml               # chatml | llama3 | alpaca | mistral | auto | "<jinja>"

Setting ``token``, ``token_force`` or ``pad_to_multiple_of`` without ``tokenizer`` means
``tokenizer = union``, as a mergekit ``tokenizer:`` block without ``source`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mergefile.errors import ConfigError, Loc
from mergefile.plan.chat_templates import resolve_chat_template
from mergefile.plan.params import substitute
from mergefile.syntax.ast import Param, Sym

__all__ = ["Fields", "TOKENIZER_SETTINGS", "TokenSource", "TokenizerRecipe", "read_recipe"]

Fields = tuple[tuple[str, Any], ...]  # an AddedToken's settings, sorted by name
TOKENIZER_SETTINGS = ("tokenizer", "tokenizer_source", "token", "token_force", "pad_to_multiple_of", "chat_template")
_ENUM_SOURCES = ("zero", "auto")


@dataclass(frozen=True, eq=False)
class TokenSource:
    """Where a listed token's row comes from: ``auto``, ``zero``, a model, or a model's other token."""

    kind: str  # "auto" | "zero" | "model" | "token"
    model: Any = None  # InputModel for "model" / "token"
    token: str | None = None  # "token": the other token, by text
    token_id: int | None = None  # "token": or by id
    loc: Loc | None = None

    def row(self, vocab: Any) -> int:
        """The old row a ``token`` source reads from ``vocab`` (-1 when absent)."""
        i = self.token_id if self.token_id is not None else vocab.ids.get(self.token, -1)
        return i if 0 <= i < vocab.limit else -1


@dataclass
class TokenizerRecipe:
    """A target's tokenizer settings, resolved (models are InputModels)."""

    mode: str | None  # None (chat template only) | "base" | "union" | "model"
    source: Any = None  # the model, for mode "model"
    tokens: dict[str, TokenSource] = field(default_factory=dict)
    force: set[str] = field(default_factory=set)
    pad: int | None = None
    chat: Param | None = None

    def models(self) -> list[Any]:
        return [s.model for s in self.tokens.values() if s.model is not None]

    def padded(self, n: int) -> int:
        return n if not self.pad else -(-n // self.pad) * self.pad

    def template(self, folders: Iterable[str]) -> str | None:
        if self.chat is None:
            return None
        return resolve_chat_template(self.chat.value, folders, self.chat.loc)


def _model(planner: Any, p: Param, value: Any) -> Any:
    return planner.model_setting(Param(p.name, value, None, p.loc))


def _is_enum(planner: Any, value: Any, word: str) -> bool:
    """In these settings the words base/union/zero/auto are keywords, even if a model has that name."""
    return isinstance(value, Sym) and value.name == word


def _token_source(planner: Any, p: Param) -> TokenSource:
    value = substitute(p.value, planner.variables)
    for word in _ENUM_SOURCES:
        if _is_enum(planner, value, word):
            return TokenSource(word, loc=p.loc)
    if isinstance(value, tuple):
        if len(value) != 2 or not isinstance(value[1], (str, int)) or isinstance(value[1], bool):
            raise ConfigError(f'token[{p.filter!r}] = [MODEL, "token"] or [MODEL, id] expected, got {value!r}', p.loc)
        m = _model(planner, p, value[0])
        if isinstance(value[1], int):
            return TokenSource("token", m, token_id=value[1], loc=p.loc)
        return TokenSource("token", m, token=value[1], loc=p.loc)
    return TokenSource("model", _model(planner, p, value), loc=p.loc)


def _pad(planner: Any, p: Param | None) -> int | None:
    if p is None:
        return None
    v = substitute(p.value, planner.variables)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"pad_to_multiple_of must be a positive integer, got {v!r}", p.loc)
    return v


def _tokens(planner: Any, t: Any) -> tuple[dict[str, TokenSource], set[str]]:
    tokens: dict[str, TokenSource] = {}
    force: set[str] = set()
    for p in t.params:
        if p.name not in ("token", "token_force"):
            continue
        if p.filter is None:
            raise ConfigError(f"'{p.name}' needs the token in brackets, e.g. {p.name}[\"<|im_start|>\"] = ...", p.loc)
        if p.name == "token":
            tokens[p.filter] = _token_source(planner, p)
            continue
        v = substitute(p.value, planner.variables)
        if not isinstance(v, bool):
            raise ConfigError(f"token_force[{p.filter!r}] must be true or false, got {v!r}", p.loc)
        (force.add if v else force.discard)(p.filter)
    for tok in force:  # a forced token without a rule is still a listed token: default rows for all
        tokens.setdefault(tok, TokenSource("auto"))
    return tokens, force


def read_recipe(planner: Any, t: Any) -> TokenizerRecipe | None:
    """The target's tokenizer recipe, or None when it sets no tokenizer option."""
    src, alt = planner.setting(t, "tokenizer"), planner.setting(t, "tokenizer_source")
    if src is not None and alt is not None and src.value != alt.value:
        raise ConfigError("'tokenizer' and 'tokenizer_source' are the same setting; give one", alt.loc)
    src = src or alt
    tokens, force = _tokens(planner, t)
    pad = _pad(planner, planner.setting(t, "pad_to_multiple_of"))
    chat = planner.setting(t, "chat_template")
    if src is None and not tokens and not force and pad is None and chat is None:
        return None
    recipe = TokenizerRecipe(None, None, tokens, force, pad, chat)
    if src is not None:
        value = substitute(src.value, planner.variables)
        if _is_enum(planner, value, "base") or _is_enum(planner, value, "union"):
            recipe.mode = value.name
        else:
            recipe.mode, recipe.source = "model", planner.model_setting(src)
    elif tokens or force or pad is not None:
        recipe.mode = "union"
    return recipe
