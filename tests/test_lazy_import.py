"""The planning path (a whole no-op rebuild) must not import torch: it costs seconds."""

import os
import subprocess
import sys

from tests.helpers import REPO


def test_planning_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import mergefile.cli.main, mergefile.cli.status_cmd, mergefile.run.build, mergefile.methods.registry\n"
        "import mergefile.plan.planner, mergefile.store.store, mergefile.cli.progress, mergefile.syntax\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_lazy_proxy_forwards_every_attribute():
    import torch as real

    from mergefile._lazy import torch

    assert torch.load is real.load and torch.Tensor is real.Tensor
    assert torch.zeros(2).sum().item() == 0.0


def test_huge_pages_for_torch_are_asked_for_unless_the_user_said_otherwise():
    """The command line sets THP_MEM_ALLOC_ENABLE before any torch import (docs/scale.md): it is
    read once, at torch's first allocation. A value in the environment wins; importing mergebuild
    as a library sets nothing."""
    import os

    code = (
        "import os, mergefile._lazy, mergefile.methods.registry, mergefile.run.build\n"
        "assert 'THP_MEM_ALLOC_ENABLE' not in os.environ or os.environ['THP_MEM_ALLOC_ENABLE'] == '0'\n"
        "from mergefile.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    for given, expected in ((None, "1"), ("0", "0")):
        e = dict(env) if given is None else {**env, "THP_MEM_ALLOC_ENABLE": given}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=e)
        assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == expected, r.stderr


def test_the_console_script_client_stays_small(tmp_path):
    """Every build pays the client's imports before a server takes over (docs/server.md)."""
    (tmp_path / "srv").mkdir(mode=0o700)
    code = (
        "import sys\n"
        "from mergefile.server.client import run\n"
        "from mergefile.cli.noop import answer_alias\n"
        "import mergefile.cli.entry\n"
        "assert answer_alias(['-n']) is None  # never run before: no alias\n"
        "assert run(['-n']) is None  # no server in the folder: the build would run here\n"
        "heavy = {'torch', 'numpy', 'lark', 'networkx', 'mergefile.cli.main', 'subprocess', 'pathlib', 'typing'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    env = {**os.environ, "MERGEBUILD_SERVER_DIR": str(tmp_path / "srv"), "MERGEBUILD_SERVER": "auto"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
