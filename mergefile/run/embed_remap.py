"""Re-index embedding / output-head rows to the merged vocabulary, before the merge (reference §6).

For every input model a new ``[size, hidden]`` matrix: a token the model has keeps the model's
own row (unless the recipe forces it); a token it lacks gets, in order of precedence, the row
the recipe names (a model's row, another token's row, or zeros), else the base model's row,
else the mean of the rows of the models that have it (so a token only one model has takes that
row, and a token none has is zeros). Padding rows are the mean of the model's real rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from mergefile._lazy import torch
from mergefile.plan.vocab import JobRemap
from mergefile.store.keys import key_of

__all__ = ["remap_inputs", "remapped_keys"]


def _index(table, device) -> torch.Tensor:
    return torch.frombuffer(table, dtype=torch.int64).clone().to(device)


def _defaults(
    gathered: list[torch.Tensor], has: list[torch.Tensor], tensors: Sequence[torch.Tensor], r: JobRemap
) -> torch.Tensor:
    """Rows for models lacking a token (or forced): fills, else base row, else mean of holders."""
    acc = torch.zeros_like(gathered[0], dtype=torch.float32)
    count = torch.zeros(r.real, dtype=torch.float32, device=acc.device)
    for g, h in zip(gathered, has):
        acc += g.float() * h[:, None]
        count += h
    default = acc / count.clamp(min=1)[:, None]
    if r.base is not None:
        hb = has[r.base]
        default[hb] = gathered[r.base][hb].float()
    for new, kind, j, old in r.fills:
        default[new] = 0.0 if kind == "zero" else tensors[j][old].float()
    return default


def remap_inputs(tensors: Sequence[torch.Tensor], r: JobRemap) -> list[torch.Tensor]:
    """The inputs of one embedding/head job, each re-indexed to the output vocabulary.

    Args:
        tensors: one ``[rows, ...]`` tensor per job input (compute dtype and device): a matrix,
            or a vector with one entry per token (a head's bias).
        r: the job's remap (tables in job input order).

    Returns:
        One ``[r.size, ...]`` tensor per input, in the input dtype.
    """
    shapes = [tuple(x.shape[1:]) for x in tensors]
    tensors = [x.reshape(x.shape[0], -1) for x in tensors]  # a vocab-sized bias (BERT's MLM head) is 1-D
    device = tensors[0].device
    idx = [_index(t, device) for t in r.tables]
    has = [i >= 0 for i in idx]
    gathered = [x[i.clamp(min=0)] for x, i in zip(tensors, idx)]
    default = _defaults(gathered, has, tensors, r)
    force = torch.zeros(r.real, dtype=torch.bool, device=device)
    if r.force:
        force[list(r.force)] = True
    out = []
    for x, g, h, shape in zip(tensors, gathered, has, shapes):
        m = torch.where((h & ~force)[:, None], g.float(), default)
        if r.size > r.real:
            m = torch.cat([m, m.mean(dim=0, keepdim=True).expand(r.size - r.real, -1)])
        out.append(m.to(x.dtype).reshape(r.size, *shape))
    return out


def remapped_keys(in_keys: Sequence[str], digest: str) -> list[str]:
    """Keys of the re-indexed inputs, for cached stages: each depends on every input and the remap."""
    return [
        key_of("remapped-input", {"inputs": list(in_keys), "remap": digest, "position": i}) for i in range(len(in_keys))
    ]
