"""Which build server may serve a client.

A build forked from the server must behave exactly as a fresh ``mergebuild`` process would.
The child takes the client's whole environment, but whatever the server's imports read from the
environment *at import time* is fixed in the server: OpenMP and MKL read their thread settings
when the library loads, huggingface_hub and transformers their cache folders, Python its
``PYTHON*`` switches and locale. So a server is keyed by: mergebuild's code (every file of the
package, the same ``depends.code_fingerprint`` the up-to-date stamps key on), the grammar file,
the interpreter, every ``sys.path`` folder's identity (installing or upgrading a package changes
its site-packages folder), and the import-time part of the environment (``IMPORT_TIME_ENV``,
declared in ``mergefile/depends.py`` beside the stamps' ``RESOLUTION_ENV``). Any difference
means another server, or none: the build then runs in its own process.
"""

from __future__ import annotations

import json
import os
import sys

import xxhash

from mergefile.depends import IMPORT_TIME_ENV, code_fingerprint, import_environment
from mergefile.server.environment import ENVIRONMENT_DEFAULTS

__all__ = ["IMPORT_TIME_ENV", "fingerprint", "import_environment"]


def _identity(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # absence is a fact too: a folder appearing on the path must count
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def interpreter() -> list:
    """The interpreter and every import folder but the first (the client's is the console
    script's folder, the server's its working directory: neither holds modules it imports)."""
    paths = [p for p in sys.path[1:] if p]
    return [os.path.realpath(sys.executable), sys.version, [(p, _identity(p)) for p in paths]]


def grammar_files() -> list:
    """Both places the grammar is looked for (installed wheel, source checkout)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = (
        os.path.join(package, "grammar", "mergefile.lark"),
        os.path.join(os.path.dirname(package), "grammar", "mergefile.lark"),
    )
    return [(p, _identity(p)) for p in candidates]


def fingerprint(env: dict[str, str]) -> str:
    """A short hex key: equal for a client and a server that would build identically."""
    seen = import_environment({**ENVIRONMENT_DEFAULTS, **env})  # as the build will see it
    text = json.dumps([code_fingerprint(), grammar_files(), interpreter(), seen])
    return xxhash.xxh3_128_hexdigest(text.encode())
