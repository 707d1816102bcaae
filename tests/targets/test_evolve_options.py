"""mergekit-evolve's remaining options: --wandb*, --merge-cuda, --reshard, --load-in-8bit/4bit.

On CPU: the option plumbing, the up-front errors, resharding (copies read instead of the
originals, same keys, same tensors, same scores), W&B logging read back from an offline run, and
one search end to end with --reshard --wandb. With CUDA (``gpu`` marker): merges on the GPU and
quantized evaluation, from a folder and in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mergefile.cli.main import main
from tests.helpers import read_tensors
from tests.targets.evolve_support import TASK, TASK_DIR, make_evolve_models, write_genome

# every option mergekit-evolve's command line has (mergekit/scripts/evolve.py) and the two
# quantization switches of the issue: each must parse
SEED_OPTIONS = [
    "--max-fevals",
    "3",
    "--vllm",
    "--no-vllm",
    "-s",
    "pool",
    "--strategy",
    "serial",
    "--in-memory",
    "--no-in-memory",
    "--num-gpus",
    "0",
    "--merge-cuda",
    "--no-merge-cuda",
    "--trust-remote-code",
    "--no-trust-remote-code",
    "--allow-crimes",
    "--no-allow-crimes",
    "--random-seed",
    "3",
    "--batch-size",
    "4",
    "--sigma0",
    "0.2",
    "--wandb",
    "--no-wandb",
    "--wandb-project",
    "proj",
    "--wandb-entity",
    "team",
    "--task-search-path",
    str(TASK_DIR),
    "--i-understand-the-depths-of-the-evils-i-am-unleashing",
    "--save-final-model",
    "--no-save-final-model",
    "--reshard",
    "--no-reshard",
    "--timeout",
    "60",
    "--force-population-size",
    "5",
    "--load-in-8bit",
]


def parse(*argv: str):
    from mergefile.cli.evolve_cmd import add_arguments, evolve_options

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["genome.yml", "--storage-path", "st", *argv])
    return args, evolve_options(args)


# ---- option plumbing ---------------------------------------------------------------------------


def test_every_mergekit_evolve_option_parses_and_reaches_the_search_options():
    _, o = parse(*SEED_OPTIONS)
    assert (o.max_fevals, o.strategy, o.in_memory, o.vllm, o.random_seed, o.batch_size, o.sigma0) == (
        3,
        "serial",
        False,
        False,
        3,
        4,
        0.2,
    )
    assert (o.merge_cuda, o.trust_remote_code, o.allow_crimes, o.save_final_model, o.reshard) == (
        False,
        False,
        False,
        False,
        False,
    )
    assert (o.wandb, o.wandb_project, o.wandb_entity, o.quantization) == (False, "proj", "team", "8bit")
    assert (o.timeout, o.popsize, o.task_search_path) == (60.0, 5, (str(TASK_DIR),))


def test_defaults_follow_mergekit_evolve_where_this_machine_allows():
    args, o = parse()
    assert o.reshard is True  # mergekit's default: inputs copied into the storage path
    assert o.merge_cuda is None  # merge where --device evaluates (mergekit: on CUDA; we run CPU-only too)
    assert (o.wandb, o.quantization, o.strategy) == (False, None, "pool")
    _, o = parse("--wandb", "--merge-cuda", "--load-in-4bit")
    assert (o.wandb, o.merge_cuda, o.quantization, o.wandb_project) == (True, True, "4bit", None)


def test_load_in_8bit_and_4bit_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["evolve", "g.yml", "--storage-path", str(tmp_path), "--load-in-8bit", "--load-in-4bit"])
    assert e.value.code == 2
    assert "not allowed with argument --load-in-8bit" in capsys.readouterr().err


def test_merge_device_resolution():
    from mergefile.errors import UserError
    from mergefile.targets.evolve.preflight import merge_device

    assert merge_device("cpu", None, False) == "cpu"  # default: where candidates are evaluated
    assert merge_device("cuda:1", None, True) == "cuda:1"
    assert merge_device("cuda:1", False, True) == "cpu"  # --no-merge-cuda keeps the GPU for evaluation
    assert merge_device("cpu", True, True) == "cuda"
    assert merge_device("cuda:1", True, True) == "cuda:1"
    with pytest.raises(UserError, match="--merge-cuda needs a CUDA device"):
        merge_device("cpu", True, False)


@pytest.mark.parametrize(
    ("q", "device", "vllm", "cuda", "bnb", "problem"),
    [
        (None, "cpu", False, False, False, None),
        ("8bit", "cuda", False, True, True, None),
        ("4bit", "cuda:1", False, True, True, None),
        ("8bit", "cuda", False, True, False, "needs bitsandbytes: pip install bitsandbytes"),
        ("4bit", "cpu", False, False, True, "--load-in-4bit needs a CUDA device"),
        ("8bit", "cpu", False, True, True, "--load-in-8bit evaluates on the GPU: add --device cuda"),
        ("8bit", "cuda", True, True, True, "does not go with --vllm"),
        ("2bit", "cuda", False, True, True, "unknown quantization '2bit'"),
    ],
)
def test_quantization_needs_bitsandbytes_cuda_and_the_hf_backend(q, device, vllm, cuda, bnb, problem):
    from mergefile.targets.evolve.preflight import quantization_problem

    got = quantization_problem(q, device, vllm, cuda, bnb)
    assert got == problem if problem is None else problem in got


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--merge-cuda",), "--merge-cuda needs a CUDA device"),
        (("--load-in-8bit", "--device", "cuda"), "--device cuda requested but no CUDA device is available"),
        (("--load-in-4bit",), "--load-in-4bit needs"),  # bitsandbytes, or CUDA when it is installed
    ],
)
def test_gpu_options_fail_up_front_without_cuda(tmp_path, capsys, flags, message):
    models = {"base": tmp_path / "m", "a": tmp_path / "m", "b": tmp_path / "m"}  # never read: the check comes first
    genome = write_genome(tmp_path / "genome.yml", models)
    storage = tmp_path / "st"
    code = main(["evolve", str(genome), "--storage-path", str(storage), "--task-search-path", str(TASK_DIR), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not storage.exists()  # nothing ran


def test_wandb_without_the_package_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    models = {"base": tmp_path / "m", "a": tmp_path / "m", "b": tmp_path / "m"}
    genome = write_genome(tmp_path / "genome.yml", models)
    code = main(["evolve", str(genome), "--storage-path", str(tmp_path / "st"), "--wandb"])
    assert code == 2 and "--wandb needs the wandb package: pip install wandb" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()


def test_quantization_enters_the_score_key_only_when_set():
    from mergefile.targets.evolve.config import TaskSpec
    from mergefile.targets.evolve.quantize import bnb_config
    from mergefile.targets.evolve.scoring import ScoreSpec

    plain = ScoreSpec((TaskSpec(TASK),)).key_payload()
    assert "quantization" not in plain  # unquantized scores cached before keep their keys
    q8 = ScoreSpec((TaskSpec(TASK),), quantization="8bit").key_payload()
    assert q8 == {**plain, "quantization": "8bit"}
    c8, c4 = bnb_config("8bit"), bnb_config("4bit")
    assert c8.load_in_8bit and not c8.load_in_4bit
    assert c4.load_in_4bit and c4.bnb_4bit_quant_type == "nf4" and c4.bnb_4bit_compute_dtype == torch.bfloat16


def test_merge_device_reaches_candidate_builds_and_workers():
    from mergefile.targets.evolve.candidates import build_options
    from mergefile.targets.evolve.config import TaskSpec
    from mergefile.targets.evolve.scoring import ScoreSpec
    from mergefile.targets.evolve.worker import Worker, WorkerSpec

    spec = WorkerSpec(
        config=None,
        score=ScoreSpec((TaskSpec(TASK),), device="cuda"),
        cache_dir="c",
        cache_size=1,
        storage="s",
        merge_device="cpu",
    )
    assert Worker(spec)._options().device == "cpu"  # --no-merge-cuda: evaluation on the GPU, merges on the CPU
    assert build_options("cuda").read_to_device  # merging on the GPU reads inputs straight to it
    assert not build_options("cuda", in_memory=True).read_to_device
    assert not build_options("cpu").read_to_device


def test_mergefile_evolve_target_takes_the_new_settings(tmp_path):
    from mergefile.errors import ConfigError
    from mergefile.syntax import parse_text
    from mergefile.targets.evolve.target import _storage, config_from_target

    def run_of(settings: str, storage: bool = False):
        text = f'model base = "./b"\nmodel a = "./a"\nout: evolve(ties, base=base, models=[a]) {{\n{settings}\n t\n}}\n'
        mf = parse_text(text, str(tmp_path / "Mergefile"))
        t = next(s for s in mf.statements if getattr(s, "name", "") == "out")
        config, run = config_from_target(t, mf)
        return _storage(t, config, run, SimpleNamespace(root=tmp_path)) if storage else run

    run = run_of("")
    assert (run["reshard"], run["quantization"], run["wandb"]) == (False, None, False)  # a build reads in place
    run = run_of('reshard = true\nload_in_4bit = true\nwandb = true\nwandb_project = "p"\nwandb_entity = "e"')
    assert (run["reshard"], run["quantization"], run["wandb"], run["wandb_project"], run["wandb_entity"]) == (
        True,
        "4bit",
        True,
        "p",
        "e",
    )
    # quantized scores steer another search: its own state folder; the other new settings do not
    plain = run_of("", storage=True)
    assert run_of("reshard = true\nwandb = true", storage=True) == plain
    assert run_of("load_in_8bit = true", storage=True) != plain != run_of("load_in_4bit = true", storage=True)
    with pytest.raises(ConfigError, match="load_in_8bit and load_in_4bit exclude each other"):
        run_of("load_in_8bit = true\nload_in_4bit = true")


def test_the_new_modules_import_nothing_heavy():
    import subprocess

    from tests.helpers import REPO

    code = (
        "import sys\n"
        "import mergefile.cli.evolve_cmd, mergefile.targets.evolve.search, mergefile.targets.evolve.preflight\n"
        "import mergefile.targets.evolve.reshard, mergefile.targets.evolve.quantize, mergefile.targets.evolve.tracking\n"
        "heavy = {'torch', 'transformers', 'wandb', 'bitsandbytes', 'ray', 'lm_eval'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


# ---- W&B, read back from offline runs -----------------------------------------------------------


def wandb_records(run_dir: Path, timeout: float = 30.0) -> dict[str, list]:
    """The records of an offline run's ``run-ID.wandb`` file (LevelDB-style log of protobufs).

    wandb's service writes the file in the background: it is read until its ``exit`` record
    (written when the run finished) is there.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = _read_wandb_file(next(run_dir.glob("run-*.wandb")))
        if "exit" in records or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _read_wandb_file(path: Path) -> dict[str, list]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", {}
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and n == 0:  # block padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(buf)
            out.setdefault(record.WhichOneof("record_type"), []).append(record)
            buf = b""
    return out


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def wandb_history(run_dir: Path) -> dict[int, dict]:
    """Logged rows by step."""
    rows: dict[int, dict] = {}
    for r in wandb_records(run_dir).get("history", []):
        row = {_key(i): json.loads(i.value_json) for i in r.history.item}
        rows.setdefault(int(row["_step"]), {}).update(row)
    return rows


def wandb_summary(run_dir: Path) -> dict:
    out: dict = {}
    for r in wandb_records(run_dir).get("summary", []):
        out.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    return out


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch) -> Path:
    pytest.importorskip("wandb")
    root = tmp_path / "wandb-dir"
    root.mkdir()
    for k, v in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
    }.items():
        monkeypatch.setenv(k, v)
    return root


def _line(n: int, gen: int, score: float) -> dict:
    return {
        "n": n,
        "generation": gen,
        "member": n - 1,
        "key": f"k{n}",
        "score": score,
        "cached": n == 2,
        "results": {TASK: {"acc,none": score, "acc_stderr,none": 0.1}},
        "seconds": 1.5,
        "merge_seconds": 0.5,
        "eval_seconds": 1.0,
        "params": {"a.weight": [0.1 * n, 0.2], "a.density": [1.0]},
    }


def test_wandb_tracker_logs_evaluations_and_resumes_its_run(tmp_path, wandb_offline):
    from mergefile.targets.evolve.tracking import WandbTracker

    storage = tmp_path / "st"
    storage.mkdir()
    (storage / "best_config.yaml").write_text("merge_method: ties\n")
    first = WandbTracker(storage, {"method": "ties"}, project="proj")
    first.start()
    lines = [_line(1, 0, 0.25), _line(2, 0, 0.5)]
    first.evaluation(lines[0], lines[0])
    first.new_best(lines[0], storage / "best_config.yaml")
    first.evaluation(lines[1], lines[1])
    first.generation(0, lines, 0.15)
    first.finish("max_fevals", lines[1], 2)
    again = WandbTracker(storage, {"method": "ties"}, project="proj")  # a resumed search: the same run
    again.start()
    again.evaluation(_line(3, 1, 0.4), lines[1])
    again.finish("max_fevals", lines[1], 3)

    runs = sorted((wandb_offline / "wandb").glob("offline-run-*"))
    run_id = json.loads((storage / "wandb.json").read_text())["id"]
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)
    assert all("exit" in wandb_records(r) for r in runs)
    rows = wandb_history(runs[0])
    assert rows[1]["score"] == 0.25 and rows[1]["best_score"] == 0.25 and rows[1][f"tasks/{TASK}/acc"] == 0.25
    assert rows[1]["params/a.weight/group0"] == pytest.approx(0.1) and rows[1]["params/a.density"] == 1.0
    assert not any("stderr" in k for k in rows[1]) and rows[2]["cached"] == 1.0
    assert rows[2]["population/score_mean"] == 0.375 and rows[2]["cma/sigma"] == 0.15  # merged into step 2
    records = wandb_records(runs[0])
    assert "exit" in records and records["run"][0].run.project == "proj"
    assert [a.artifact.name for a in records["artifact"]] == ["best_config"]
    assert wandb_summary(runs[0])["best/score"] == 0.25
    assert wandb_history(runs[1])[3]["best_score"] == 0.5  # steps continue in the resumed run


# ---- resharding --------------------------------------------------------------------------------


def _sharded_copy(src: Path, out: Path) -> Path:
    """``src`` with its weights split over two safetensors shards and an index."""
    from safetensors.torch import save_file

    tensors = read_tensors(src)
    names = sorted(tensors)
    out.mkdir(parents=True)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), start=1):
        file = f"model-0000{i}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(out / file), {"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _copy_aux(src, out)
    return out


def _pickled_copy(src: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    torch.save(read_tensors(src), out / "pytorch_model.bin")
    _copy_aux(src, out)
    return out


def _copy_aux(src: Path, out: Path) -> None:
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors"):
            shutil.copy(p, out / p.name)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The evolve test models with one input sharded and one pickled: what resharding converts."""
    root = tmp_path_factory.mktemp("evolve_options")
    plain = make_evolve_models(root / "models")
    models = {
        "base": plain["base"],
        "a": _sharded_copy(plain["a"], root / "a-sharded"),
        "b": _pickled_copy(plain["b"], root / "b-pickled"),
    }
    return SimpleNamespace(root=root, plain=plain, models=models, genome=write_genome(root / "genome.yml", models))


def _candidates(config, genome_file):
    import numpy as np

    from mergefile.targets.evolve.genome import Genome
    from mergefile.targets.evolve.search import EvolveOptions, num_layers

    genome = Genome(config.genome, num_layers(config, EvolveOptions("unused", allow_pickle=True)))
    x0 = np.asarray(genome.initial())
    return [genome.target(x, str(genome_file.parent / "cand")) for x in (x0, x0 * 0.5 + 0.1)]


def _files_read(pc) -> set[str]:
    return {info.file for m in pc.plan.inputs for info in m.tensors.values()}


def test_reshard_reads_copies_with_the_same_keys_tensors_and_scores(inputs, tmp_path, monkeypatch):
    from mergefile.store.store import Store
    from mergefile.targets.evolve.candidates import build_candidate, build_options, plan_candidate
    from mergefile.targets.evolve.config import TaskSpec, load_genome_yaml
    from mergefile.targets.evolve.reshard import INPUTS, reshard_config
    from mergefile.targets.evolve.scoring import Scorer, ScoreSpec

    config = load_genome_yaml(inputs.genome)
    storage = tmp_path / "st"
    options = build_options("cpu", allow_pickle=True)
    made: list[str] = []
    with Store(tmp_path / "cache-orig") as orig_store, Store(tmp_path / "cache-copy") as copy_store:
        copied = reshard_config(
            config, storage, allow_pickle=True, convert_dir=str(copy_store.root / "converted"), message=made.append
        )
        copies = sorted((storage / INPUTS).iterdir())
        assert len(made) == 3 and len(copies) == 3
        for folder in copies:  # one single-shard safetensors file per input, with its config and tokenizer
            assert [p.name for p in folder.glob("*.safetensors")] == ["model.safetensors"]
            assert not list(folder.glob("*.bin")) and not list(folder.glob("*.index.json"))
            assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
        base_copy = next(f for f in copies if f.name.startswith("base-"))
        assert (
            os.stat(base_copy / "model.safetensors").st_ino
            == os.stat(inputs.models["base"] / "model.safetensors").st_ino
        )
        for target in _candidates(config, inputs.genome):
            pc_orig = plan_candidate(config, target, orig_store, options)
            pc_copy = plan_candidate(copied, target, copy_store, options)
            assert pc_copy.key == pc_orig.key  # the copies hash the same tensors: same candidate
            assert all(f.startswith(str(storage / INPUTS)) for f in _files_read(pc_copy))  # what is read changed
            assert not any(f.startswith(str(storage)) for f in _files_read(pc_orig))
        target = _candidates(config, inputs.genome)[1]
        out_orig = build_candidate(config, target, tmp_path / "built-orig", orig_store, options)
        out_copy = build_candidate(copied, target, tmp_path / "built-copy", copy_store, options)
    a, b = read_tensors(out_orig), read_tensors(out_copy)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # computed apart, bit for bit
    for k, v in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}.items():
        monkeypatch.setenv(k, v)
    pytest.importorskip("lm_eval")
    scorer = Scorer(ScoreSpec((TaskSpec(TASK),), task_paths=(str(TASK_DIR),)))
    assert scorer.score_folder(out_copy) == scorer.score_folder(out_orig)


def test_reshard_reuses_copies_and_redoes_a_changed_input(inputs, tmp_path):
    from mergefile.targets.evolve.config import load_genome_yaml
    from mergefile.targets.evolve.reshard import INPUTS, reshard_config

    config = load_genome_yaml(inputs.genome)
    storage = tmp_path / "st"
    reshard_config(config, storage, allow_pickle=True, convert_dir=str(tmp_path / "converted"))
    before = {p.name: p.stat().st_mtime_ns for p in (storage / INPUTS).iterdir()}
    made: list[str] = []
    reshard_config(config, storage, allow_pickle=True, convert_dir=str(tmp_path / "converted"), message=made.append)
    assert made == [] and {p.name: p.stat().st_mtime_ns for p in (storage / INPUTS).iterdir()} == before
    shard = inputs.models["a"] / "model-00001-of-00002.safetensors"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the input changed on disk
    try:
        reshard_config(config, storage, allow_pickle=True, convert_dir=str(tmp_path / "converted"), message=made.append)
    finally:
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = sorted(p.name for p in (storage / INPUTS).iterdir())
    assert len(made) == 1 and "a-sharded" in made[0]
    assert len(after) == 3 and set(after) - set(before) and len(set(before) - set(after)) == 1  # old copy removed


def test_no_reshard_needs_no_pickle_conversion_in_storage(inputs, tmp_path):
    """Without --reshard nothing is copied: plan reads the originals (and the cache's conversion)."""
    from mergefile.store.store import Store
    from mergefile.targets.evolve.candidates import build_options, plan_candidate
    from mergefile.targets.evolve.config import load_genome_yaml

    config = load_genome_yaml(inputs.genome)
    with Store(tmp_path / "cache") as store:
        pc = plan_candidate(
            config, _candidates(config, inputs.genome)[0], store, build_options("cpu", allow_pickle=True)
        )
    read = _files_read(pc)
    assert any(f.startswith(str(inputs.models["a"].resolve())) for f in read)
    assert any(f.startswith(str(tmp_path / "cache" / "converted")) for f in read)  # the .bin, converted once


# ---- one search end to end: --reshard --wandb, then --no-reshard over the same cache --------------


def evolve(inputs, storage: Path, cache: Path, *extra: str) -> int:
    return main(
        [
            "evolve",
            str(inputs.genome),
            "--storage-path",
            str(storage),
            "--cache-dir",
            str(cache),
            "--max-fevals",
            "3",
            "--force-population-size",
            "3",
            "--task-search-path",
            str(TASK_DIR),
            "--allow-pickle",
            "--no-save-final-model",
            "--quiet",
            *extra,
        ]
    )


def history(storage: Path) -> list[dict]:
    return [json.loads(line) for line in (storage / "history.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_search_with_reshard_and_wandb(inputs, tmp_path, wandb_offline, ray_local, capsys):
    from mergefile.targets.evolve.reshard import INPUTS

    st, cache = tmp_path / "st", tmp_path / "cache"
    assert evolve(inputs, st, cache, "--reshard", "--wandb", "--wandb-project", "evo-test") == 0, (
        capsys.readouterr().err
    )
    lines = history(st)
    assert [h["n"] for h in lines] == [1, 2, 3] and all(h["score"] is not None for h in lines)
    assert len(list((st / INPUTS).iterdir())) == 3
    assert str(st / INPUTS) not in (st / "best.mf").read_text()  # the best recipe names the original models
    (run,) = (wandb_offline / "wandb").glob("offline-run-*")
    assert "exit" in wandb_records(run)  # the run finished (wandb writes its file in the background)
    rows = wandb_history(run)
    best = json.loads((st / "best.json").read_text())
    for h in lines:  # one step per evaluation: its score, the best so far, its task metric, its parameters
        row = rows[h["n"]]
        assert row["score"] == pytest.approx(h["score"]) and row[f"tasks/{TASK}/acc"] == pytest.approx(h["score"])
        assert row["best_score"] == pytest.approx(max(x["score"] for x in lines[: h["n"]]))
        assert any(k.startswith("params/") for k in row)
    summary = wandb_summary(run)
    assert summary["best/score"] == pytest.approx(best["score"]) and summary["stop"] == "max_fevals"
    records = wandb_records(run)
    assert "exit" in records and records["run"][0].run.project == "evo-test"
    config = {u.key: json.loads(u.value_json) for u in records["run"][0].run.config.update}
    assert config["method"] == "ties" and config["reshard"] is True
    assert "best_config" in [a.artifact.name for a in records["artifact"]]

    # the originals, read in place: the same candidates, found in the score cache (Ray never starts)
    plain = tmp_path / "st-plain"
    assert evolve(inputs, plain, cache, "--no-reshard") == 0, capsys.readouterr().err
    again = history(plain)
    assert not (plain / INPUTS).exists()
    assert all(h["cached"] for h in again)

    def by_member(hs):  # results arrive in any order from two workers
        return {(h["generation"], h["member"]): (h["key"], h["score"]) for h in hs}

    assert by_member(again) == by_member(lines)


# ---- with CUDA -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_merge_cuda_search_matches_cpu_merges(inputs, tmp_path, ray_local):
    from mergefile.store.store import Store
    from mergefile.targets.evolve.candidates import build_candidate, build_options
    from mergefile.targets.evolve.config import load_genome_yaml

    config = load_genome_yaml(inputs.genome)
    target = _candidates(config, inputs.genome)[1]
    with (
        Store(tmp_path / "c-cpu") as s_cpu,
        Store(tmp_path / "c-gpu") as s_gpu,
    ):  # own caches: keys leave out the device
        cpu = read_tensors(build_candidate(config, target, tmp_path / "cpu", s_cpu, build_options("cpu", True)))
        gpu_ = read_tensors(build_candidate(config, target, tmp_path / "gpu", s_gpu, build_options("cuda", True)))
    assert cpu.keys() == gpu_.keys() and all(torch.allclose(cpu[k], gpu_[k], atol=1e-5) for k in cpu)
    st = tmp_path / "st"
    assert evolve(inputs, st, tmp_path / "cache", "--merge-cuda", "--workers", "1") == 0
    assert all(h["score"] is not None and not h.get("error") for h in history(st))


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_evaluation_from_a_folder_and_in_memory(inputs, tmp_path, monkeypatch, bits):
    """The model really is quantized, and a candidate scores the same from its folder as when
    its weights are quantized into the resident model."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("lm_eval")
    import bitsandbytes as bnb

    from mergefile.io.header import TORCH_DTYPES
    from mergefile.store.store import Store
    from mergefile.targets.evolve.candidates import build_candidate, build_options, candidate_tensors, plan_candidate
    from mergefile.targets.evolve.config import TaskSpec, load_genome_yaml
    from mergefile.targets.evolve.scoring import Resident, Scorer, ScoreSpec

    for k, v in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}.items():
        monkeypatch.setenv(k, v)
    config = load_genome_yaml(inputs.genome)
    first, second = _candidates(config, inputs.genome)
    spec = ScoreSpec((TaskSpec(TASK),), task_paths=(str(TASK_DIR),), device="cuda", quantization=bits)
    scorer = Scorer(spec)
    options = build_options("cuda", allow_pickle=True)
    with Store(tmp_path / "cache") as store:
        folder = build_candidate(config, second, tmp_path / "second", store, options)
        lm = scorer.folder_lm(folder)
        kind = bnb.nn.Linear8bitLt if bits == "8bit" else bnb.nn.Linear4bit
        assert any(isinstance(m, kind) for m in lm.model.modules())
        from_folder = scorer.score_lm(lm)
        del lm
        pc = plan_candidate(config, first, store, options)
        resident = Resident(scorer, pc.plan.donor.path, TORCH_DTYPES[pc.plan.jobs[0].result_dtype], "cuda")
        resident.load(candidate_tensors(config, first, store, options))  # another candidate first: overwritten
        resident.load(candidate_tensors(config, second, store, options))
        in_memory = resident.score()
    assert in_memory == from_folder


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_search_evaluates_quantized(inputs, tmp_path, ray_local):
    pytest.importorskip("bitsandbytes")
    st = tmp_path / "st"
    assert evolve(inputs, st, tmp_path / "cache", "--device", "cuda", "--load-in-8bit", "--workers", "1") == 0
    lines = history(st)
    assert all(h["score"] is not None and not h.get("error") for h in lines)
    # quantized scores are cached apart from full-precision ones
    assert evolve(inputs, tmp_path / "st-full", tmp_path / "cache", "--device", "cuda", "--workers", "1") == 0
    assert not any(h["cached"] for h in history(tmp_path / "st-full"))
