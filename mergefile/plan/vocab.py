"""Tokenizer merging, planned: the output vocabulary and, per input model, new id -> old id.

Only tokenizer files and config.json are read (never weights), so this runs while planning.
The embedding and output-head jobs get a *remap* (permutation tables plus fill rules, reference
§6) whose digest enters their key and theirs only: editing a weight never rebuilds the
permutation, and editing the tokenizer recipe never rebuilds a layer. Building the output
tokenizer files waits for publishing (``run/tokenizer_out.py``), keyed by the input tokenizer
files' digests, so a no-op build does not do it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergefile.arch.slicing import config_get, config_set
from mergefile.errors import ConfigError
from mergefile.plan.tokenizer_recipe import Fields, TokenizerRecipe, read_recipe
from mergefile.store.keys import key_of

__all__ = ["JobRemap", "ModelVocab", "TokenizerSpec", "VocabPlan", "load_backend", "plan_vocab"]

REMAP_VERSION = 1  # bump when the fill rules change: every remapped embedding rebuilds
_FIELD_NAMES = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
NORMAL_ADDED: Fields = (
    ("content", ""),
    ("lstrip", False),
    ("normalized", True),
    ("rstrip", False),
    ("single_word", False),
    ("special", False),
)


@dataclass(frozen=True)
class ModelVocab:
    """One model's tokenizer as planning sees it."""

    ids: Mapping[str, int]  # token -> id, added tokens included
    added: Mapping[int, Fields]  # id -> AddedToken fields
    limit: int  # ids >= limit have no embedding row (config vocab_size)
    folder: str  # where its tokenizer files are
    identity: str  # digest of those files (what the output tokenizer's key covers)


@dataclass(frozen=True, eq=False)
class JobRemap:
    """How one embedding/head job re-indexes its inputs to the output vocabulary."""

    digest: str
    size: int  # output rows (padding included)
    real: int  # output tokens (rows past it are padding)
    tables: tuple[array, ...]  # per job input: new id -> old row, -1 when absent
    base: int | None  # job input whose row wins for tokens several models have
    fills: tuple[tuple[int, str, int, int], ...]  # (new id, "zero"|"row", input, old row)
    force: tuple[int, ...]  # new ids that ignore the models' own rows


@dataclass(frozen=True)
class TokenizerSpec:
    """What publishing writes: a source tokenizer, stripped, with tokens added and a template."""

    folder: str
    strip_to: int | None
    add: tuple[Fields, ...]
    chat_template: str | None
    expect: tuple[str, ...]  # output tokens in id order (checked after building)
    key: str


@dataclass
class VocabPlan:
    """A target's tokenizer plan; ``tokens`` is None when only the chat template changes."""

    tokens: tuple[str, ...] | None
    added: Mapping[int, Fields]
    size: int | None
    remaps: dict[str, JobRemap] = field(default_factory=dict)
    tokenizer: TokenizerSpec | None = None  # None: copy the donor's files unchanged
    donor: Any = None  # the model whose files are copied when ``tokenizer`` is None

    def apply(self, jobs: list, inputs: Sequence) -> list:
        """Jobs with the remap digest set on embedding/head jobs (and their new shape)."""
        out = []
        for job in jobs:
            r = self.remaps.get(job.name)
            out.append(
                job
                if r is None
                else dataclasses.replace(job, vocab=r.digest, result_shape=(r.size, *job.result_shape[1:]))
            )
        return out


def load_backend(folder: str) -> Any:
    """A folder's ``tokenizers.Tokenizer`` (tokenizer.json, else converted by transformers), or None."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if not any(
        (Path(folder) / n).is_file() for n in ("tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
    ):
        return None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
    except Exception:  # any failure means "no usable tokenizer": the caller says so
        return None
    return getattr(tok, "backend_tokenizer", None)


def _read_ids(folder: str) -> tuple[dict[str, int], dict[int, Fields]] | None:
    """token -> id (added tokens included) and the added tokens' settings, or None without a tokenizer.

    Plain JSON when there is a tokenizer.json (several times faster than building the tokenizer).
    """
    path = Path(folder) / "tokenizer.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = data.get("model", {}).get("vocab")
        if isinstance(vocab, dict) or (isinstance(vocab, list) and all(isinstance(p, list) for p in vocab)):
            ids = dict(vocab) if isinstance(vocab, dict) else {p[0]: i for i, p in reversed(list(enumerate(vocab)))}
            added = {}
            for a in data.get("added_tokens", []):
                ids[a["content"]] = a["id"]
                added[a["id"]] = tuple(sorted((k, a[k]) for k in _FIELD_NAMES))
            return ids, added
    backend = load_backend(folder)
    if backend is None:
        return None
    added = {i: added_fields(a) for i, a in backend.get_added_tokens_decoder().items()}
    return backend.get_vocab(with_added_tokens=True), added


def added_fields(tok: Any) -> Fields:
    """An AddedToken as sorted, hashable fields."""
    return tuple(
        sorted(
            {
                "content": tok.content,
                "lstrip": tok.lstrip,
                "normalized": tok.normalized,
                "rstrip": tok.rstrip,
                "single_word": tok.single_word,
                "special": tok.special,
            }.items()
        )
    )


def folder_identity(folder: str) -> str:
    """Digest of a folder's tokenizer files: the output tokenizer is keyed by it."""
    import xxhash

    from mergefile.io.hf_folder import TOKENIZER_FILES

    parts = {}
    for name in TOKENIZER_FILES:
        p = Path(folder) / name
        if p.is_file():
            parts[name] = xxhash.xxh3_128_hexdigest(p.read_bytes())
    return key_of("tokenizer-files", {"files": parts})


def _limit(model: Any, default: int) -> int:
    key = model.get_layout().vocab_key
    for k in (key, "vocab_size", "text_config.vocab_size"):
        v = config_get(model.config, k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return default


def model_vocab(planner: Any, model: Any) -> ModelVocab | None:
    """The vocabulary of an input: its tokenizer files, or an upstream target's planned output."""
    if model.target is not None:
        up = planner.plan(model.target)
        v = up.vocab
        if v is not None and v.tokens is not None:
            ids = {t: i for i, t in enumerate(v.tokens)}
            ident = v.tokenizer.key if v.tokenizer else folder_identity(v.donor.path)
            folder = up.out_dir if v.tokenizer else v.donor.path
            return ModelVocab(ids, dict(v.added), v.size or len(ids), str(folder), ident)
        donor = v.donor if v is not None else up.donor
        inner = model_vocab(planner, donor)
        if inner is None:
            return None
        ident = v.tokenizer.key if v is not None and v.tokenizer else inner.identity
        return dataclasses.replace(inner, limit=_limit(model, inner.limit), identity=ident)
    read = _read_ids(model.path)
    if read is None:
        return None
    ids, added = read
    return ModelVocab(ids, added, _limit(model, len(ids)), model.path, folder_identity(model.path))


def _in_id_order(v: ModelVocab, label: str, limit: int | None) -> list[str]:
    toks = sorted(((i, t) for t, i in v.ids.items() if limit is None or i < limit))
    if any(i != k for k, (i, _) in enumerate(toks)):
        raise ConfigError(f"the tokenizer of '{label}' has gaps in its token ids; it cannot start a merged vocabulary")
    return [t for _, t in toks]


def _output_tokens(
    recipe: TokenizerRecipe, start: ModelVocab, start_label: str, union: Sequence[ModelVocab]
) -> tuple[list[str], list[Fields], int | None]:
    """Output tokens in id order, the tokens appended to the start tokenizer, and the strip limit."""
    limit = None if recipe.mode == "model" else start.limit
    tokens = _in_id_order(start, start_label, limit)
    strip = limit if limit is not None and any(i >= limit for i in start.ids.values()) else None
    present = set(tokens)
    added: list[Fields] = []

    def add(tok: str, fields: Fields) -> None:
        present.add(tok)
        tokens.append(tok)
        added.append(tuple((k, tok if k == "content" else v) for k, v in fields))

    if recipe.mode == "union":
        for v in union:  # regular vocabulary first, then added tokens (first definition wins)
            for tok, i in sorted(v.ids.items(), key=lambda kv: kv[1]):
                if i < v.limit and i not in v.added and tok not in present:
                    add(tok, NORMAL_ADDED)
        for v in union:
            for i, fields in sorted(v.added.items()):
                tok = dict(fields)["content"]
                if i < v.limit and tok not in present:
                    add(tok, fields)
    for tok in recipe.tokens:
        if tok not in present:
            add(tok, NORMAL_ADDED)
    return tokens, added, strip


def _table(tokens: Sequence[str], v: ModelVocab) -> array:
    get = v.ids.get
    rows = [get(t, -1) for t in tokens]
    if max(rows, default=-1) >= v.limit:
        rows = [i if i < v.limit else -1 for i in rows]
    return array("q", rows)


def _digest(a: array) -> str:
    import xxhash

    if sys.byteorder == "big":
        a = array(a.typecode, a)
        a.byteswap()
    return xxhash.xxh3_128_hexdigest(a.tobytes())


@dataclass
class _Ctx:
    """What building the job remaps needs, gathered once per target."""

    recipe: TokenizerRecipe
    inputs: Sequence[Any]
    vocabs: dict[int, ModelVocab]  # id(model) -> vocab
    tokens: list[str]
    size: int
    base: Any
    tables: dict[int, array] = field(default_factory=dict)  # plan input index -> table


def _job_remap(job: Any, c: _Ctx) -> JobRemap | None:
    index = {t: i for i, t in enumerate(c.tokens)}
    tables, models = [], []
    for ref in job.inputs:
        m = c.inputs[ref.model]
        rows = m.tensors[ref.tensor].shape[0]
        t = c.tables[ref.model]
        tables.append(t if max(t, default=-1) < rows else array("q", (x if x < rows else -1 for x in t)))
        models.append(m)
    force = tuple(sorted(index[t] for t in c.recipe.force))
    ident = list(range(len(c.tokens)))
    if (
        not force
        and c.size == len(c.tokens)
        and all(
            t.tolist() == ident and c.inputs[r.model].tensors[r.tensor].shape[0] == c.size
            for t, r in zip(tables, job.inputs)
        )
    ):
        return None
    fills = []
    for tok, src in c.recipe.tokens.items():
        new = index[tok]
        if src.kind == "auto" or (new not in force and all(t[new] >= 0 for t in tables)):
            continue  # no rule, or every input of this job has its own row
        if src.kind == "zero":
            fills.append((new, "zero", -1, -1))
            continue
        j = next((k for k, m in enumerate(models) if m is src.model), None)
        if j is None:
            raise ConfigError(
                f"token {tok!r} takes its row from '{src.model.label}', which is not an input of '{job.name}'", src.loc
            )
        old = tables[j][new] if src.kind == "model" else src.row(c.vocabs[id(src.model)])
        if old < 0:
            what = (
                f"{tok!r}"
                if src.kind == "model"
                else f"{src.token if src.token_id is None else src.token_id!r} (the row for {tok!r})"
            )
            raise ConfigError(f"token {what} is not in the vocabulary of model '{src.model.label}'", src.loc)
        fills.append((new, "row", j, old))
    base = next((k for k, m in enumerate(models) if m is c.base), None)
    payload = {
        "version": REMAP_VERSION,
        "tables": [_digest(t) for t in tables],
        "size": c.size,
        "base": base,
        "fills": [list(f) for f in fills],
        "force": list(force),
    }
    return JobRemap(key_of("vocab-remap", payload), c.size, len(c.tokens), tuple(tables), base, tuple(fills), force)


def _is_vocab_job(job: Any, inputs: Sequence[Any]) -> bool:
    return job.group[0] in ("pre", "post") and all(_token_rows(inputs[r.model], r.tensor) for r in job.inputs)


def _token_rows(model: Any, name: str) -> bool:
    """Whether ``name``'s rows are token ids: a vocabulary tensor of the layout whose first
    dimension is the model's vocabulary size (not BERT's ``embeddings.LayerNorm`` or
    ``token_type_embeddings``, which only look like one), or a vocabulary-sized 1-D head bias
    (BERT's ``cls.predictions.bias``)."""
    lay = model.get_layout()
    size = model.config.get(lay.vocab_key)
    shape = tuple(model.tensors[name].shape)
    if not isinstance(size, int) or not shape:
        return name in lay.vocab
    if name in lay.vocab:
        return shape[0] == size
    return (
        len(shape) == 1
        and shape[0] == size
        and name.endswith("bias")
        and name in lay.post
        and "norm" not in name.lower()
    )


def _vocab_of(planner: Any, model: Any, base_vocab: ModelVocab | None, warnings: list[str]) -> ModelVocab:
    v = model_vocab(planner, model)
    if v is not None:
        return v
    if base_vocab is None:
        raise ConfigError(f"model '{model.label}' has no tokenizer files, so its vocabulary cannot be merged")
    warnings.append(f"model '{model.label}' has no tokenizer; assuming the base model's")
    return dataclasses.replace(base_vocab, limit=_limit(model, base_vocab.limit))


def plan_vocab(
    planner: Any, t: Any, base: Any, donor: Any, inputs: list, jobs: list, warnings: list[str]
) -> VocabPlan | None:
    """The target's tokenizer plan, or None when it sets no tokenizer option.

    Args:
        planner: the Planner (settings, model resolution, upstream plans).
        t: the Target.
        base: the target's base model, if any; else the first input is the vocabulary's base.
        donor: the weights donor (its tokenizer is copied when only a chat template is set).
        inputs: the plan's input models (job ``InputRef.model`` indexes them).
        jobs: the planned jobs (embedding/head jobs get remaps).
        warnings: the plan's warnings, appended to.
    """
    recipe = read_recipe(planner, t)
    if recipe is None:
        return None
    chat = recipe.template([m.path for m in inputs])
    if recipe.mode is None:
        ident = model_vocab(planner, donor)
        if ident is None:
            raise ConfigError(
                f"chat_template is set, but model '{donor.label}' has no tokenizer to put it in", recipe.chat.loc
            )
        spec_key = key_of("tokenizer", {"source": ident.identity, "chat_template": chat})
        spec = TokenizerSpec(ident.folder, None, (), chat, (), spec_key)
        return VocabPlan(None, {}, None, tokenizer=spec, donor=donor)
    vbase = base if base is not None else inputs[0]
    start_model = recipe.source if recipe.mode == "model" else vbase
    vocabs: dict[int, ModelVocab] = {id(vbase): _vocab_of(planner, vbase, None, warnings)}
    for m in [start_model, *inputs, *recipe.models()]:
        if id(m) not in vocabs:
            vocabs[id(m)] = _vocab_of(planner, m, vocabs[id(vbase)], warnings)
    order = [vocabs[i] for i in dict.fromkeys([id(vbase), *(id(m) for m in inputs)])]
    tokens, added, strip = _output_tokens(recipe, vocabs[id(start_model)], start_model.label, order)
    size = recipe.padded(len(tokens))
    start = vocabs[id(start_model)]
    out_added = {i: f for i, f in start.added.items() if strip is None or i < strip}
    out_added.update({len(tokens) - len(added) + k: f for k, f in enumerate(added)})
    c = _Ctx(
        recipe, inputs, vocabs, tokens, size, vbase, {i: _table(tokens, vocabs[id(m)]) for i, m in enumerate(inputs)}
    )
    _warn_orphans(c, warnings)
    remaps = {j.name: r for j in jobs if _is_vocab_job(j, inputs) and (r := _job_remap(j, c)) is not None}
    spec = None
    if strip is not None or added or chat is not None:
        payload = {
            "source": start.identity,
            "strip_to": strip,
            "add": [dict(f) for f in added],
            "chat_template": chat,
            "tokens": _digest_tokens(tokens),
        }
        spec = TokenizerSpec(start.folder, strip, tuple(added), chat, tuple(tokens), key_of("tokenizer", payload))
    return VocabPlan(tuple(tokens), out_added, size, remaps, spec, donor=start_model)


def _digest_tokens(tokens: Sequence[str]) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest("\n".join(tokens).encode("utf-8", "surrogatepass"))


def _warn_orphans(c: _Ctx, warnings: list[str]) -> None:
    """Tokens no input model has and no rule fills get zero rows: say so (mergekit warns too)."""
    configured = {t for t, s in c.recipe.tokens.items() if s.kind != "auto"}
    orphans = [
        tok for k, tok in enumerate(c.tokens) if tok not in configured and all(t[k] < 0 for t in c.tables.values())
    ]
    if orphans:
        shown = ", ".join(repr(o) for o in orphans[:5]) + (" ..." if len(orphans) > 5 else "")
        warnings.append(
            f"{len(orphans)} output token(s) are in no input model's vocabulary; their rows are zeros: {shown}"
        )


def fit_config(config: dict, layout: Any, size: int) -> None:
    """Set the output vocabulary size where the config keeps it."""
    key = layout.vocab_key
    if config_get(config, key) is None and isinstance(config_get(config, "text_config.vocab_size"), int):
        key = "text_config.vocab_size"
    config_set(config, key, size)
