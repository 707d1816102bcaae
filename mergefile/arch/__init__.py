"""Architecture knowledge: which tensors are per-layer, how layers are numbered, layer-count keys.

Known families are data (``families.json``, loaded by ``families.py``); anything else is
inferred from tensor names (``generic.py``). ``slicing.py`` holds the frankenmerge rules;
``modular.py`` splits multi-module checkpoints (vision-language models, T5) by module.
"""

from mergefile.arch.families import (
    Family,
    Modular,
    ModuleSpec,
    arch_id,
    families,
    family_for,
    known_architectures,
    modular_families,
)
from mergefile.arch.generic import LayerLayout, LayerName, is_embedding, split_layer_name
from mergefile.arch.modular import ModelModules, layer_layout, model_modules
from mergefile.arch.slicing import check_architectures, config_get, config_set, loose_inputs, rewrite_config

__all__ = [
    "Family",
    "LayerLayout",
    "LayerName",
    "ModelModules",
    "Modular",
    "ModuleSpec",
    "arch_id",
    "check_architectures",
    "config_get",
    "config_set",
    "families",
    "family_for",
    "is_embedding",
    "known_architectures",
    "layer_layout",
    "loose_inputs",
    "model_modules",
    "modular_families",
    "rewrite_config",
    "split_layer_name",
]
