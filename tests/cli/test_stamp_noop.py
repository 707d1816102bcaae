"""The stamped no-op: a repeated request whose files all match is answered without planning.

Every way the answer could change must fall back to the full check: the recipe, an include, an
input model's files, an output's files, the flags, the environment, mergebuild's code.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import mergefile.cli.main as cli_main
from mergefile.store import stamp
from tests.helpers import age_files, cli, mergefile_for, read_tensors


def last_run(cache: Path) -> list[dict]:
    logs = sorted((cache / "logs").glob("*.jsonl"))
    return [json.loads(line) for line in logs[-1].read_text().splitlines()]


def stamped(cache: Path) -> bool:
    """Whether the newest run was answered from a stamp."""
    return any(r.get("summary") and r.get("stamp") for r in last_run(cache))


@pytest.fixture()
def project(tmp_path: Path, tiny_models: dict[str, Path]) -> tuple[Path, Path, dict[str, Path]]:
    models = {n: tmp_path / "models" / n for n in ("base", "a")}
    for n, p in models.items():
        shutil.copytree(tiny_models[n], p)
    work = tmp_path / "w"
    work.mkdir()
    (work / "extra.mf").write_text("# nothing yet\n")
    mergefile_for(work, models, 'include "extra.mf"\nout/m: linear { base weight=0.5\n a weight=0.5 }')
    settle()
    return work, work / "cache", models


def settle() -> None:
    """Let files just written age past the racy window: a stamp never vouches for a file changed
    as (or after) the run began reading it."""
    time.sleep(2 * stamp.RACY_FINE_NS / 1e9)


def test_second_noop_is_answered_by_the_stamp(project, capsys) -> None:
    work, cache, _ = project
    assert cli(work, cache=cache) == 0
    capsys.readouterr()
    assert cli(work, cache=cache) == 0
    assert stamped(cache)
    assert capsys.readouterr().out.strip() == "out/m is up to date"
    assert cli(work, "-q", cache=cache) == 0  # -q: exit 0, nothing printed
    assert stamped(cache) and capsys.readouterr().out == ""


def test_stamped_noop_does_not_plan(project, monkeypatch) -> None:
    work, cache, _ = project
    assert cli(work, cache=cache) == 0

    def boom(args):
        raise AssertionError("the recipe was parsed")

    monkeypatch.setattr(cli_main, "load_recipe", boom)
    assert cli(work, cache=cache) == 0


def _edit_then_build(work: Path, cache: Path) -> dict:
    assert cli(work, cache=cache) == 0
    assert not stamped(cache)
    return read_tensors(work / "out" / "m")


def test_recipe_edit_is_seen(project) -> None:
    work, cache, _ = project
    cli(work, cache=cache)
    before = read_tensors(work / "out" / "m")
    mf = work / "Mergefile"
    mf.write_text(mf.read_text().replace("a weight=0.5", "a weight=0.7"))
    after = _edit_then_build(work, cache)
    assert not all((before[k] == after[k]).all() for k in before)


def test_include_edit_is_seen(project) -> None:
    work, cache, _ = project
    cli(work, cache=cache)
    (work / "extra.mf").write_text("out/other: linear { base weight=1.0\n a weight=1.0 }\n")
    # the include now puts out/other first: it becomes the default target
    assert cli(work, cache=cache) == 0
    assert not stamped(cache)
    assert (work / "out" / "other" / "config.json").is_file()


def test_input_change_is_seen(project) -> None:
    work, cache, models = project
    cli(work, cache=cache)
    before = read_tensors(work / "out" / "m")
    src = next(models["a"].glob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    t = load_file(str(src))
    name = sorted(t)[0]
    t[name] = t[name] + 1
    save_file(t, str(src), metadata={"format": "pt"})
    age_files(models["a"])  # an old mtime (e.g. cp -p, rsync): only size/ctime/inode tell
    old = time.time() - 60
    os.utime(models["a"], (old, old))
    after = _edit_then_build(work, cache)
    assert not (before[name] == after[name]).all()


def test_output_damage_is_seen(project) -> None:
    work, cache, _ = project
    cli(work, cache=cache)
    before = read_tensors(work / "out" / "m")
    victim = sorted((work / "out" / "m").glob("*.safetensors"))[0]
    victim.unlink()
    after = _edit_then_build(work, cache)
    assert sorted(before) == sorted(after)
    assert victim.is_file()


def test_flags_and_environment_get_their_own_stamps(project, monkeypatch) -> None:
    work, cache, _ = project
    cli(work, cache=cache)
    cli(work, cache=cache)
    assert stamped(cache)
    cli(work, "--allow-crimes", cache=cache)  # another request: no stamp of its own yet
    assert not stamped(cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # resolution may differ: full check
    cli(work, cache=cache)
    assert not stamped(cache)
    cli(work, cache=cache)
    assert stamped(cache)


def test_dry_run_explain_and_force_never_use_the_stamp(project, capsys) -> None:
    work, cache, _ = project
    cli(work, cache=cache)
    for flags in (("-n",), ("--explain",), ("-B",)):
        cli(work, *flags, cache=cache)
        assert not stamped(cache), flags


def test_code_change_invalidates(project, monkeypatch) -> None:
    work, cache, _ = project
    cli(work, cache=cache)
    cli(work, cache=cache)
    assert stamped(cache)
    monkeypatch.setattr(stamp, "code_fingerprint", lambda: "another version")
    cli(work, cache=cache)
    assert not stamped(cache)


def test_racy_files_are_not_trusted(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_text("a")
    req = {"r": 1}
    assert stamp.record(tmp_path / "c", req, ["t"], [str(f)])
    assert stamp.check(tmp_path / "c", req) == (["t"], [])
    # a stamp taken right as the file changed cannot tell a same-tick rewrite: refused
    data = json.loads((tmp_path / "c" / "stamps" / f"{stamp.request_id(req)}.json").read_text())
    data["written_ns"] = os.stat(f).st_mtime_ns + 1
    (tmp_path / "c" / "stamps" / f"{stamp.request_id(req)}.json").write_text(json.dumps(data))
    assert stamp.check(tmp_path / "c", req) is None


def test_a_missing_file_appearing_invalidates(tmp_path: Path) -> None:
    req = {"r": 2}
    ghost = tmp_path / "later.mf"
    stamp.record(tmp_path / "c", req, ["t"], [str(ghost)])
    assert stamp.check(tmp_path / "c", req) == (["t"], [])
    ghost.write_text("x")
    assert stamp.check(tmp_path / "c", req) is None


def test_a_new_file_in_a_watched_folder_invalidates(tmp_path: Path) -> None:
    req = {"r": 3}
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    old = time.time() - 60
    os.utime(d / "config.json", (old, old))
    os.utime(d, (old, old))
    stamp.record(tmp_path / "c", req, ["t"], [str(d)], ["warning: w"])
    assert stamp.check(tmp_path / "c", req) == (["t"], ["warning: w"])
    (d / "tokenizer.json").write_text("{}")
    assert stamp.check(tmp_path / "c", req) is None


def test_warnings_are_repeated(tmp_path: Path, tiny_models: dict[str, Path], capsys) -> None:
    """What the full check warned, the stamped no-op warns again (planted in the stamp here)."""
    work = tmp_path / "w"
    work.mkdir()
    mergefile_for(
        work, {"base": tiny_models["base"], "a": tiny_models["a"]}, "out/m: linear { base weight=1\n a weight=1 }"
    )
    cache = work / "cache"
    settle()
    cli(work, cache=cache)
    path = next((cache / "stamps").glob("*.json"))
    data = json.loads(path.read_text())
    data["messages"] = ["warning: out/m: planted"]
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert cli(work, cache=cache) == 0
    assert stamped(cache)
    assert "warning: out/m: planted" in capsys.readouterr().err


def test_a_recipe_saved_during_the_build_is_not_vouched_for(project, monkeypatch) -> None:
    """The recipe changes after the build read it: no stamp may call the new one up to date."""
    from mergefile.run import build as build_module

    work, cache, _ = project
    mf = work / "Mergefile"
    real_build = build_module.build

    def edit_during(*args, **kwargs):
        report = real_build(*args, **kwargs)
        mf.write_text(mf.read_text().replace("a weight=0.5", "a weight=0.9"))  # saved mid-build
        return report

    monkeypatch.setattr(build_module, "build", edit_during)
    assert cli(work, cache=cache) == 0
    monkeypatch.setattr(build_module, "build", real_build)
    assert not list((cache / "stamps").glob("*.json"))
    before = read_tensors(work / "out" / "m")
    assert cli(work, "-q", cache=cache) == 1  # the edit is seen: stale
    assert cli(work, cache=cache) == 0 and not stamped(cache)
    after = read_tensors(work / "out" / "m")
    assert not all((before[k] == after[k]).all() for k in before)
