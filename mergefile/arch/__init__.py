"""Architecture knowledge: which tensors are per-layer, how layers are numbered, layer-count keys.

Known families are data (``families.json``, loaded by ``families.py``); anything else is
inferred from tensor names (``generic.py``). ``slicing.py`` holds the frankenmerge rules.
"""

from mergefile.arch.families import Family, arch_id, families, family_for
from mergefile.arch.generic import LayerLayout, LayerName, is_embedding, layer_layout, split_layer_name
from mergefile.arch.slicing import check_architectures, config_get, config_set, loose_inputs, rewrite_config

__all__ = [
    "Family",
    "LayerLayout",
    "LayerName",
    "arch_id",
    "check_architectures",
    "config_get",
    "config_set",
    "families",
    "family_for",
    "is_embedding",
    "layer_layout",
    "loose_inputs",
    "rewrite_config",
    "split_layer_name",
]
