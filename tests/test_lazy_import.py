"""The planning path (a whole no-op rebuild) must not import torch: it costs seconds."""

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
    from mergefile._lazy import torch

    import torch as real

    assert torch.load is real.load and torch.Tensor is real.Tensor
    assert torch.zeros(2).sum().item() == 0.0
