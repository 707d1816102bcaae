"""MoE gate vectors: one ``(layers, hidden)`` vector stack per expert, cached by (model, prompts).

Each expert's vectors are a derived tensor of a virtual input model (``InputModel.source``), keyed
by the gate mode, its prompts and negative prompts, and what the mode reads: the whole base
model and its tokenizer for ``hidden``/``hidden_avg``, the embedding and tokenizer for
``cheap_embed``, nothing but the seed and the expert's position for ``random``/
``uniform_random``. The router of each layer is an ordinary output job stacking row ``l`` of
these, so editing one expert's prompts recomputes that expert's vectors and the routers, and
nothing else.

Modes (reference §7), computed as mergekit 0.1.5's ``mergekit-moe`` computes them, so the routers
are its tensors bit for bit on the CPU: each expert's prompts are tokenized together as one batch
(the BOS token's text prepended to each prompt, no other special tokens, left padding with BOS).
``hidden`` runs that batch through the base model loaded in bfloat16 and takes each layer's input
hidden state at the last position (``hidden_avg``: summed over every position, padding included,
and divided by the length), summed over the prompts and divided by their number, all in bfloat16;
``cheap_embed`` sums the float32 embeddings of the batch's unpadded tokens (over positions, then
prompts) and L2-normalises the sum, the same vector for every layer. Negative prompts' vector is
subtracted; each layer's vector is L2-normalised (in bfloat16 for ``hidden``). An expert without
prompts (a shared expert) gets zeros.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash

from mergefile._lazy import torch
from mergefile.store.keys import key_of

__all__ = ["GATE_MODES", "ExpertPrompts", "GateVectors", "hidden_state_vectors"]

VERSION = 2  # 2: mergekit's batched bfloat16 hidden states and summed cheap embeddings
GATE_MODES = ("hidden", "hidden_avg", "cheap_embed", "random", "uniform_random")
RANDOM_MODES = ("random", "uniform_random")


@dataclass(frozen=True)
class ExpertPrompts:
    name: str  # the gate tensor's name in the virtual model
    prompts: tuple[str, ...]
    negative: tuple[str, ...] = ()


def tokenizer_digest(folder: str) -> str:
    """Digest of a folder's tokenizer files (small; read at key time like config.json)."""
    from mergefile.io.hf_folder import TOKENIZER_FILES

    h = xxhash.xxh3_128()
    for name in TOKENIZER_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            h.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@dataclass(eq=False)
class GateVectors:
    """The derived-tensor source of one MoE target's gate vectors."""

    base: Any  # InputModel
    mode: str
    experts: tuple[ExpertPrompts, ...]
    layers: int
    hidden: int
    seed: int
    embedding: str | None  # the base's embedding tensor (cheap_embed)
    keys: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tokenizer_dir: str | None = None

    def input_keys(self, names: Iterable[str], stat, upstream: Mapping[str, Any]) -> dict[str, str]:
        from mergefile.run.plan_keys import model_keys

        reads: dict[str, Any] = {}
        if self.mode not in RANDOM_MODES:
            tensors = set(self.base.tensors) if self.mode != "cheap_embed" else {self.embedding}
            keys = model_keys(self.base, tensors, stat, upstream)
            folder = self.base.path
            if self.base.target is not None and self.base.target in upstream:  # not built yet: its donor's
                folder = upstream[self.base.target].plan.donor.path
            self._tokenizer_dir = folder
            reads = {
                "tensors": dict(sorted(keys.items())),
                "config": self.base.config,
                "tokenizer": tokenizer_digest(folder),
            }
        wanted = set(names)
        for i, e in enumerate(self.experts):
            if e.name not in wanted:
                continue
            payload: dict[str, Any] = {"version": VERSION, "mode": self.mode, "shape": [self.layers, self.hidden]}
            if self.mode in RANDOM_MODES:
                payload.update(seed=self.seed, index=i)
            elif e.prompts:
                payload.update(reads=reads, prompts=list(e.prompts), negative=list(e.negative))
            self.keys[e.name] = key_of("moe_gate", payload)
        return {n: self.keys[n] for n in wanted}

    def load(self, name: str, key: str, blobs, reader) -> tuple[torch.Tensor, int]:
        t = blobs.get(key)
        if t is None:
            with self._lock:  # one model load for all experts, however many routers miss at once
                t = blobs.get(key)
                if t is None:
                    t = self._compute_into(blobs)[name]
        return t, t.numel() * t.element_size()

    def _compute_into(self, blobs) -> dict[str, torch.Tensor]:
        """Compute every expert's vectors whose key is known but missing; store them."""
        todo = [e for e in self.experts if e.name in self.keys and blobs.get(self.keys[e.name]) is None]
        out = {e.name: blobs.get(self.keys[e.name]) for e in self.experts if e.name in self.keys}
        if self.mode in RANDOM_MODES:
            vecs = {e.name: self._random(e) for e in todo}
        elif self.mode == "cheap_embed":
            vecs = self._cheap_embed(todo)
        else:
            vecs = hidden_state_vectors(
                self.base.path, self._tokenizer_dir or self.base.path, todo, average=self.mode == "hidden_avg"
            )
        for name, v in vecs.items():
            v = v.to(torch.float32).contiguous()
            blobs.put(self.keys[name], v)
            out[name] = v
        return out

    def _random(self, e: ExpertPrompts) -> torch.Tensor:
        from mergefile.store.keys import seed_from_key

        g = torch.Generator().manual_seed(seed_from_key(self.keys[e.name], self.seed))
        if self.mode == "random":
            return torch.randn((self.layers, self.hidden), generator=g)
        bound = 1.0 / self.hidden**0.5  # nn.Linear's init range
        return torch.rand((self.layers, self.hidden), generator=g) * (2 * bound) - bound

    def _cheap_embed(self, todo: list[ExpertPrompts]) -> dict[str, torch.Tensor]:
        from mergefile.io.model_dir import ModelDir
        from mergefile.io.reader import TensorReader

        tok = gate_tokenizer(self._tokenizer_dir or self.base.path)
        with TensorReader() as reader:
            embed = reader.get(ModelDir.open(self.base.path).tensors[self.embedding]).float().clone()

        def vec(prompts: tuple[str, ...]) -> torch.Tensor:
            batch = tokenize_prompts(tok, prompts)
            mask = batch["attention_mask"]
            # embedding rows as a one-hot product gives them (+ 0.0: a product never yields -0.0)
            rows = embed[batch["input_ids"]] + 0.0  # (prompts, seq, hidden)
            total = (rows * mask.unsqueeze(-1)).sum(dim=1).sum(dim=0)
            return total / total.norm(dim=-1, keepdim=True).clamp(min=1e-8)

        return {e.name: _finish(vec, e, (self.layers, self.hidden)) for e in todo}


def gate_tokenizer(folder: str):
    """The base's tokenizer set up as mergekit-moe sets it: left padding, BOS (else EOS) as padding."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    own_pad = tok.pad_token
    tok.padding_side = "left"
    tok.pad_token_id = tok.bos_token_id
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else own_pad
    return tok


def tokenize_prompts(tok, prompts: tuple[str, ...]):
    """One batch of an expert's prompts: the BOS token's text prepended, no special tokens added."""
    bos = tok.bos_token or ""
    return tok([bos + p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)


def _finish(vec, e: ExpertPrompts, shape: tuple[int, int]) -> torch.Tensor:
    """Positive minus negative, L2-normalised per layer (in ``vec``'s dtype); zeros without prompts.

    ``vec(prompts)`` gives ``(layers, hidden)``, or ``(hidden,)`` for a vector every layer shares.
    """
    if not e.prompts:
        return torch.zeros(shape)
    v = vec(e.prompts)
    if e.negative:
        v = v - vec(e.negative)
    if v.ndim == 1:
        v = v.unsqueeze(0).expand(shape).clone()
    return v / v.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)


def hidden_state_vectors(
    model_dir: str, tokenizer_dir: str, experts: list[ExpertPrompts], average: bool = False
) -> dict[str, torch.Tensor]:
    """``hidden`` gate vectors ``(layers, hidden)`` of each expert, from the model in ``model_dir``.

    As mergekit-moe: the model in bfloat16 on the CPU; an expert's prompts one left-padded batch;
    the input hidden state of every layer (``hidden_states[:-1]``) at the last position
    (``average``: the sum over all positions divided by the length); the sum over prompts divided
    by their number, minus the same for the negative prompts, normalised: each step in bfloat16.
    """
    from transformers import AutoModelForCausalLM

    from mergefile.targets._hf import quiet_transformers

    tok = gate_tokenizer(tokenizer_dir)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model.eval()

    def vec(prompts: tuple[str, ...]) -> torch.Tensor:
        with torch.no_grad():
            out = model(**tokenize_prompts(tok, prompts), output_hidden_states=True, return_dict=True)
        hs = torch.stack(out.hidden_states[:-1])  # (layers, prompts, seq, hidden), bfloat16
        hs = hs.sum(dim=2) / hs.shape[2] if average else hs[:, :, -1]
        return hs.sum(dim=1) / hs.shape[1]

    return {e.name: _finish(vec, e, (model.config.num_hidden_layers, model.config.hidden_size)) for e in experts}
