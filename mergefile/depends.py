"""What a result depends on beyond its recipe and models, declared once.

Two mechanisms decide from this declaration that work can be skipped or shared:

* the **up-to-date proof** (``store/stamp.py``): a stamp vouches that a request's targets are up
  to date given the ``stat`` identity of every file the plan read, mergebuild's code
  (:func:`code_fingerprint`) and :func:`resolution_environment`; the console script's alias of
  a repeated command line is a lookup key for that same stamp, under the same environment;
* the build server's **fingerprint** (``server/fingerprint.py``): which server may serve a
  client, from the same :func:`code_fingerprint` and :func:`import_environment`.

The environment comes in two groups of prefixes, declared side by side here:

* ``RESOLUTION_ENV``: read while a build resolves models and answers the request (the hub
  libraries, mergebuild's own settings such as ``MERGEBUILD_CACHE_DIR``). A stamp and an alias
  key on them: any difference is a full check. ``MERGEBUILD_SERVER*`` only says where a build
  runs, not what it builds, and is left out.
* ``IMPORT_TIME_ENV``: read once, when a library is imported (OpenMP and MKL thread settings,
  the hub libraries' cache folders, Python's switches, locale). A server has them fixed from its own
  start, so they enter its fingerprint. Run-time variables do not: a served build takes its
  client's whole environment, and its answer is checked against them like any other build's.

The hub libraries' prefixes belong to both groups (``HUB_ENV``). Nothing else in mergebuild
declares a list of variables that decide whether work is skipped (``tests/test_depends.py``).
Standard library and xxhash only: the console script imports this before anything else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mergefile._tree import code_fingerprint

__all__ = [
    "HUB_ENV",
    "IMPORT_TIME_ENV",
    "RESOLUTION_ENV",
    "RESOLUTION_ENV_EXCEPT",
    "code_fingerprint",
    "import_environment",
    "resolution_environment",
]

# huggingface_hub, transformers: read both at import (cache folders) and while resolving models
HUB_ENV = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")

# Prefixes. An up-to-date answer (a stamp, an alias) depends on these ...
RESOLUTION_ENV = HUB_ENV + ("MERGEBUILD_",)
RESOLUTION_ENV_EXCEPT = ("MERGEBUILD_SERVER",)  # where a build runs, not what it builds
# ... and a build server's imports have read these (its fingerprint).
IMPORT_TIME_ENV = (
    (
        "PYTHON",
        "LANG",
        "LC_",
        "HOME",
        "XDG_CACHE_HOME",
        "TMPDIR",
        "LD_",
        "MALLOC_",
        "OMP_",
        "KMP_",
        "GOMP_",
        "MKL_",
        "OPENBLAS_",
        "NUMEXPR_",
        "TORCH",
        "PYTORCH_",
        "THP_",
        "CUDA_",
        "NVIDIA_",
    )
    + HUB_ENV
    + ("TOKENIZERS_",)
)


def resolution_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of ``env`` (default: this process's) that an up-to-date answer depends on."""
    env = os.environ if env is None else env
    return {
        k: v for k, v in sorted(env.items()) if k.startswith(RESOLUTION_ENV) and not k.startswith(RESOLUTION_ENV_EXCEPT)
    }


def import_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``env`` that a build server's imports may have read."""
    return {k: v for k, v in sorted(env.items()) if k.startswith(IMPORT_TIME_ENV)}
