"""Architecture knowledge: which tensors are per-layer, how layers are numbered, layer-count keys."""

from mergefile.arch.generic import LayerName, LayerLayout, layer_layout, split_layer_name

__all__ = ["LayerLayout", "LayerName", "layer_layout", "split_layer_name"]
