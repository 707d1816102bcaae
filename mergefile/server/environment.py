"""Which environment variables matter to a build server, and which cross its socket.

What decides that work is skipped or shared is declared once, in ``mergefile/depends.py``:
``IMPORT_TIME_ENV`` (variables a library may read once, while the server imports it: OpenMP and
MKL thread settings, huggingface_hub's cache folders, Python's switches) enters the server's
fingerprint, and a client whose values differ is never served by that server;
``RESOLUTION_ENV`` (model resolution, mergebuild's settings) is what up-to-date stamps key on.
This module adds what only the server needs, and the cgroup check (standard library only: the
console script imports this):

* ``BUILD_ENV``: what a served build may read while it runs. Only these cross the socket and
  become the forked build's environment; anything else the client holds (cloud credentials,
  API keys of unrelated tools, ``SSH_AUTH_SOCK``) stays in the client. ``HF_TOKEN`` crosses
  because resolving and pushing hub models needs it. Both declared lists cross, plus
  ``RUNTIME_ENV``.

A variable a build reads that is missing from ``BUILD_ENV`` would make a served build differ
from one run in its own process; ``tests/server/test_server.py`` checks the list against every
variable mergebuild's own code reads.
"""

from __future__ import annotations

import os

from mergefile.depends import IMPORT_TIME_ENV, RESOLUTION_ENV, import_environment

__all__ = [
    "BATCH_JOB_ENV",
    "BUILD_ENV",
    "ENVIRONMENT_DEFAULTS",
    "IMPORT_TIME_ENV",
    "RUNTIME_ENV",
    "batch_job",
    "build_environment",
    "cgroup",
    "import_environment",
    "set_environment_defaults",
]

# Read while a build runs besides those two lists: the hub client (tokens, proxies,
# certificates), Ray and wandb (evolve), the terminal (progress bars, colours, width), time zone
# and user.
RUNTIME_ENV = (
    "HUGGING_FACE_",
    "RAY_",
    "WANDB_",
    "XDG_",
    "SSL_CERT_",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "PATH",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "COLORTERM",
    "COLUMNS",
    "LINES",
    "NO_COLOR",
    "FORCE_COLOR",
    "CLICOLOR",
    "TZ",
)

BUILD_ENV = IMPORT_TIME_ENV + RESOLUTION_ENV + RUNTIME_ENV

# Variables a batch scheduler sets in every job: a build inside a job must stay in the job's
# process tree, where the scheduler's memory, CPU and time limits and its accounting apply.
BATCH_JOB_ENV = (
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "PBS_JOBID",
    "LSB_JOBID",
    "FLUX_JOB_ID",
    "COBALT_JOBID",
    "_CONDOR_JOB_AD",
    "AZ_BATCH_TASK_ID",
)


def build_environment(env: dict[str, str]) -> dict[str, str]:
    """The part of ``env`` a served build gets: what mergebuild and its libraries read."""
    return {k: v for k, v in env.items() if k.startswith(BUILD_ENV)}


def batch_job(env: dict[str, str]) -> str | None:
    """The scheduler variable that says this runs inside a batch job, or None."""
    for name in BATCH_JOB_ENV:
        if env.get(name):
            return name
    if env.get("JOB_ID") and env.get("SGE_ROOT"):  # Grid Engine
        return "JOB_ID"
    return None


def cgroup() -> str:
    """This process's control groups (``/proc/self/cgroup``), or "" where there are none.

    A served build runs in the server's cgroups, so a server serves only clients in the same
    ones: memory or CPU limits set on a shell's cgroup (``systemd-run --scope``, a container
    per command) then always apply to its builds."""
    try:
        with open("/proc/self/cgroup") as f:
            return f.read()
    except OSError:
        return ""


# PyTorch's CPU allocator asks for transparent huge pages on large blocks when this is set. A
# merge makes a fresh float32 copy of every input tensor; with 4 KiB pages each copy is faulted
# in page by page: a cold build of 4 x 3.1 GB bf16 models took 5.6 M page faults and 32 s of
# kernel time, with 2 MiB pages 0.5 M faults and 18 s (7 s less wall time on the bench VM).
# Read once, when torch first allocates: the command line (``cli/main.main``), the build server
# before it imports torch (``warm.py``) and each served build (``child.py``) set it first thing;
# importing mergebuild as a library changes no variable. A value the user set wins, and kernels
# with THP off ignore it.
ENVIRONMENT_DEFAULTS = {"THP_MEM_ALLOC_ENABLE": "1"}


def set_environment_defaults(environ=os.environ) -> None:
    """Apply ``ENVIRONMENT_DEFAULTS`` where the user set nothing (also in a build forked by the
    build server, whose environment is replaced by its client's)."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        environ.setdefault(name, value)
