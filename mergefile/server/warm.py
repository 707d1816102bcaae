"""What the build server loads before it forks, and what keeps its forks safe and cheap.

Everything a plain build imports is imported here once (``WARM_MODULES``; verbs that need
transformers, peft, lm-eval or Ray import them in the build). Before forking, the server must be
single-threaded, its imported objects frozen out of the garbage collector, and torch's
exit-time teardown switched off for the forks.
"""

from __future__ import annotations

import gc
import importlib
import os
import threading

# What a build imports (a plain build of the demo and of the bench recipe import nothing else):
# torch and the planning, keying, merge and output modules. Verbs that need transformers,
# peft, lm-eval or Ray import them in the child.
WARM_MODULES = (
    "torch",
    "numpy",
    "mergefile.cli.main",
    "mergefile.cli.progress",
    "mergefile.cli.render",
    "mergefile.syntax",
    "mergefile.syntax.parser",
    "mergefile.plan.planner",
    "mergefile.plan.graph",
    "mergefile.run.build",
    "mergefile.run.compute",
    "mergefile.run.publish",
    "mergefile.run.deferred",
    "mergefile.run.stale",
    "mergefile.run.executor",
    "mergefile.run.plan_keys",
    "mergefile.methods.registry",
    "mergefile.methods._gta_kernels_numba",  # compiled TIES/task-arithmetic kernels, loaded
    "mergefile.io.reader",
    "mergefile.io.writer",
    "mergefile.store.store",
    "mergefile.store.blobs",
    "mergefile.store.statcache",
    "mergefile.store.stamp",
    "mergefile.store.log",
    "mergefile.store.lock",
    "mergefile.plan.modules",
    "mergefile.targets",
    "mergefile.io.model_card",
    "encodings.utf_8_sig",
)


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def single_threaded() -> bool:
    """Whether forking now is safe. numpy's OpenBLAS starts a thread pool at import and shuts it
    down in a ``pthread_atfork`` handler; a probe fork lets such libraries do that, and what
    still runs after it would be copied mid-flight into every build."""
    if thread_count() == 1:
        return True
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return thread_count() == 1


def warm() -> None:
    from mergefile import _lazy
    from mergefile.server.environment import set_environment_defaults

    set_environment_defaults()  # before torch is imported: its allocator reads them once
    for name in WARM_MODULES:
        importlib.import_module(name)
    _lazy.torch._lazy_load()
    from mergefile.syntax.grammar import get_parser

    get_parser()
    from mergefile.cli.main import make_parser

    make_parser()
    _skip_torch_teardown()
    # What the imports left is permanent: a build's first garbage collection would otherwise
    # walk (and copy-on-write touch) all of it, 0.2 s. gc.freeze is made for pre-fork servers.
    gc.collect()
    gc.freeze()


def _skip_torch_teardown() -> None:
    """torch deregisters its ~130 operator libraries at exit (weakref finalizers): 40 ms of
    every forked build's exit, with no effect outside the process. Not in the builds forked
    from here."""
    import weakref

    try:
        from torch.library import _del_library
    except ImportError:
        return
    for finalizer, info in list(getattr(weakref.finalize, "_registry", {}).items()):
        if getattr(info, "func", None) is _del_library:
            finalizer.atexit = False
