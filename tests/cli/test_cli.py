"""The command line: exit codes, one-paragraph errors without tracebacks, CI walkthrough."""

import json

import pytest

from tests.helpers import cli, mergefile_for, run_subprocess


@pytest.mark.parametrize(
    "text, args, needle",
    [
        ("out/x: linear { a weight=1 \n", (), "Mergefile:"),
        ("out/x: linear { a weight=1 }", ("out/y",), "unknown target 'out/y'"),
        ("out/x: lineer { a weight=1 }", (), "did you mean 'linear'"),
        ("out/x: linear { zz weight=1 }", (), "unknown model 'zz'"),
        ("out/x: linear { a weight=1 }", ("--device", "tpu"), "unknown device"),
        ("out/x: linear { a weight=1 }", ("--device", "cuda"), "CUDA"),
    ],
)
def test_user_errors_exit_2_without_traceback(tiny_models, tmp_path, capsys, text, args, needle):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    mergefile_for(tmp_path, {"a": tiny_models["a"]}, text)
    code = cli(tmp_path, *args, cache=tmp_path / "cache")
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert err.startswith("mergebuild: error:")


def test_missing_mergefile(tmp_path, capsys):
    assert cli(tmp_path) == 2
    assert "no Mergefile found" in capsys.readouterr().err


def test_config_needs_one_target(tmp_path, capsys):
    (tmp_path / "m.yml").write_text("merge_method: linear\nmodels: []\n")
    assert cli(tmp_path, "--config", "m.yml") == 2
    assert "exactly one TARGET" in capsys.readouterr().err


def test_syntax_error_names_file_line_column(tmp_path, capsys):
    (tmp_path / "Mergefile").write_text('model a = "x"\n\nout/x: linear {\n  a weight=\n}\n')
    assert cli(tmp_path) == 2
    err = capsys.readouterr().err
    assert "Mergefile:4:" in err


def test_ci_walkthrough_in_a_subprocess(tiny_models, tmp_path):
    """build, edit, -q says stale (1), rebuild, -q says up to date (0)."""
    mf = mergefile_for(tmp_path, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    cache = str(tmp_path / "cache")
    assert run_subprocess(tmp_path, "--cache-dir", cache).returncode == 0
    assert run_subprocess(tmp_path, "-q", "--cache-dir", cache).returncode == 0
    mf.write_text(mf.read_text().replace("b weight=1", "b weight=2"))
    r = run_subprocess(tmp_path, "-q", "--explain", "--cache-dir", cache)
    assert r.returncode == 1 and "weight of b 1.0 -> 2.0" in r.stdout
    assert run_subprocess(tmp_path, "--cache-dir", cache).returncode == 0
    assert run_subprocess(tmp_path, "-q", "--cache-dir", cache).returncode == 0
    bad = run_subprocess(tmp_path, "nope", "--cache-dir", cache)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_dry_run_estimates(tiny_models, tmp_path, capsys):
    mergefile_for(tmp_path, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    capsys.readouterr()
    assert cli(tmp_path, "-n", "--json", cache=tmp_path / "cache") == 0
    r = json.loads(capsys.readouterr().out)["targets"][0]
    assert r["stale"] and r["stale"][0]["reason"] == "missing_output"
    assert r["estimate"]["read_bytes"] > 0 and r["estimate"]["write_bytes"] > 0
    assert not (tmp_path / "out").exists()
    assert cli(tmp_path, "-n", cache=tmp_path / "cache") == 0
    assert "would compute 39 tensors" in capsys.readouterr().out
