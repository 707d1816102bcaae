"""mergebuild: make for model merges.

The package follows the pipeline: ``syntax`` (Mergefile/YAML -> AST) -> ``plan`` (AST -> target
graph and per-tensor nodes) -> ``store``/``run`` (keys, cache, execution) -> ``io`` (safetensors
in and out, Hugging Face folders).
"""

__version__ = "0.1.0"
