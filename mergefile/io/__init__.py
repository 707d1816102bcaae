"""Safetensors in and out, and the other files of a Hugging Face model folder.

Reading is lazy (headers first, tensor bytes by mmap on demand) and writing streams one tensor at
a time through a temp file and a rename, so memory holds a few tensors and outputs are never
half-written. The vocabulary follows safetensors (``_file`` functions take a path).
"""

from mergefile.io.header import DTYPE_CODES, TORCH_DTYPES, TensorInfo, dtype_name, parse_dtype, read_header
from mergefile.io.hf_folder import TOKENIZER_FILES, copy_aux_files, write_config
from mergefile.io.model_dir import ModelDir
from mergefile.io.reader import TensorReader, digest_tensors
from mergefile.io.writer import tensor_bytes, write_index, write_safetensors

__all__ = [
    "DTYPE_CODES",
    "TOKENIZER_FILES",
    "TORCH_DTYPES",
    "ModelDir",
    "TensorInfo",
    "TensorReader",
    "copy_aux_files",
    "digest_tensors",
    "dtype_name",
    "parse_dtype",
    "read_header",
    "tensor_bytes",
    "write_config",
    "write_index",
    "write_safetensors",
]
