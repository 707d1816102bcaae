"""The build: plan -> keys -> compare -> compute what is missing -> publish, target by target.

Targets are processed prerequisites first; with ``-j N`` independent targets build side by side
(``run/schedule.py``), their tensor work sharing one executor and one memory budget, and a
target starts only once the targets it reads are published. Keys of a downstream target are
computed from upstream keys (Merkle style), so a dry run can explain a whole multi-stage recipe
without building anything.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mergefile._lazy import preload, torch
from mergefile.errors import TensorFailed, UserError
from mergefile.io.writer import RawTensor, raw_tensor
from mergefile.methods.registry import get_method
from mergefile.plan.graph import build_graph, build_order
from mergefile.plan.inputs import ResolveOptions
from mergefile.plan.jobs import TargetPlan, TensorJob
from mergefile.plan.kinds import generators
from mergefile.plan.lockfile import check_plans, lock_for, lock_path
from mergefile.plan.planner import Planner
from mergefile.run.compute import InputLoader, JobResult, compute_job, job_input_bytes
from mergefile.run.compute_bits import compute_bits, takes_bits
from mergefile.run.deferred import (
    SharedDigests,
    defer_keys,
    deferrable,
    read_by_others,
    read_once_mode,
    readahead_window,
)
from mergefile.run.executor import Executor, LocalExecutor, ScheduledJob
from mergefile.run.plan_keys import KeyedPlan, key_plan
from mergefile.run.portable import DeviceLoader, absorb, hub_file_names, job_peak_bytes, make_portable
from mergefile.run.publish import OutputWriter, aux_files, hub_lineage
from mergefile.run.schedule import Cancelled, run_targets
from mergefile.run.stale import TargetStatus, compare, in_previous_output
from mergefile.store.lock import output_lock
from mergefile.store.store import Store
from mergefile.syntax.ast import Mergefile


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build is told; one frozen object, set up by the CLI."""

    jobs: int = 1
    device: str = "cpu"
    force: bool = False
    dry_run: bool = False
    memory_budget: int = 4 * 2**30
    allow_pickle: bool = False
    allow_crimes: bool = False  # merge models of different architectures
    wait_for_lock: bool = True
    executor: str = "local"  # "local" | "ray" (Ray must be initialized: ray_executor.ray_session)
    read_to_device: bool = False  # inputs go to the device as read, cast there
    out_shard_size: int | None = None  # bytes per output shard (whole layers packed); None: one per layer
    copy_tokenizer: bool = True  # tokenizer files in the output (mergekit's --no-copy-tokenizer)
    write_card: bool = True  # README.md and mergebuild_config.yml (mergekit's --no-write-model-card)


@dataclass
class TargetReport:
    name: str
    status: TargetStatus
    built: bool = False
    computed: int = 0
    cache_hits: int = 0
    from_output: int = 0  # unchanged tensors of a rewritten shard, copied from the current folder
    stage_hits: int = 0
    stage_misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    to_compute: list[str] = field(default_factory=list)
    est_read: int = 0
    est_write: int = 0
    est_peak: int = 0


@dataclass
class Watched:
    """What a plan depended on besides the recipe, for the no-op stamp (``store/stamp.py``)."""

    paths: list[str] = field(default_factory=list)  # model/adapter/output folders, the lockfile
    outputs: list[str] = field(default_factory=list)  # the output folders among them (this run writes them)
    messages: list[str] = field(default_factory=list)  # warnings a no-op prints again
    stampable: bool = True  # False: a moving hub reference or an evolve target


@dataclass
class BuildReport:
    targets: list[TargetReport]
    watched: Watched = field(default_factory=Watched)

    @property
    def up_to_date(self) -> bool:
        return all(t.status.up_to_date for t in self.targets)


class Progress:
    """What a build tells its caller while it runs (the CLI renders it)."""

    def start_target(self, name: str, total: int) -> None: ...
    def advance(self, name: str, n: int = 1, nbytes: int = 0) -> None: ...
    def message(self, text: str) -> None: ...
    def end_target(self, name: str) -> None: ...


def _check_device(device: str, executor: str = "local") -> None:
    if executor not in ("local", "ray"):
        raise UserError(f"unknown executor '{executor}' (use local or ray)")
    if device.startswith("cuda") and executor == "local" and not torch.cuda.is_available():
        raise UserError(f"--device {device} requested but no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UserError(f"unknown device '{device}' (use cpu or cuda)")


def _warm_modules(plan: TargetPlan) -> set[str]:
    """What the methods of ``plan``'s jobs ask to have imported ahead (``Method.warm``)."""
    return {m for name in {j.method for j in plan.jobs} for m in get_method(name).warm}


def plan_build(
    mf: Mergefile,
    requested: Sequence[str],
    store: Store,
    options: BuildOptions,
    progress: Progress | None = None,
    watched: Watched | None = None,
    defer: bool = False,
) -> list[tuple[TargetPlan, KeyedPlan, TargetStatus, object]]:
    """Plan, key and compare every needed target. Reads headers and the stat-cache only.

    An ``evolve`` target (a target generator) first becomes its best candidate: a build runs its
    search to the end; a dry run takes the best so far (``targets/evolve/target.py``).

    ``defer``: a target that will be computed whole (no output folder yet) and that no other
    target here reads takes the input digests it lacks as the build reads the tensors
    (``run/deferred.py``), so a cold build reads its inputs once.
    """
    watched = watched if watched is not None else Watched()
    for method, expand in generators().items():  # evolve(...): a search's best candidate
        if any(getattr(s, "method", None) == method for s in mf.statements):
            watched.stampable = False
            mf = expand(mf, requested, store, options, progress)
    g = build_graph(mf)
    order = build_order(mf, g, requested)
    lock = lock_for(mf)  # Mergefile.lock: hub references resolve to their pinned commits
    pins = lock.pins if lock is not None else {}
    planner = Planner(
        mf,
        ResolveOptions(
            allow_pickle=options.allow_pickle,
            convert_dir=str(store.root / "converted"),
            pins=pins,
            allow_crimes=options.allow_crimes,
        ),
    )
    keyed: dict[str, KeyedPlan] = {}
    out = []
    others = read_by_others(g, order) if defer and lock is None else None
    mode = read_once_mode() if others is not None else "never"
    shared, started = SharedDigests(), []
    try:
        for name in order:
            plan = planner.plan(name)
            plan.hub_lineage = hub_lineage(plan, {p.name: p.hub_lineage for p, *_ in out})
            if options.out_shard_size and all(
                n.startswith("model") for n in plan.shard_names.values()
            ):  # model folders
                plan.shard_names = pack_shards(plan, options.out_shard_size)
            if others is not None and deferrable(plan, name, others):
                kp = defer_keys(plan, store.stat, shared, mode)
                if kp.deferred is not None and not started:
                    # the first one starts reading now, overlapping planning and torch's import
                    # (started below: the target is stale); the others when they build (one
                    # window of pages and hash threads at a time)
                    kp.deferred.readahead(plan.jobs, readahead_window(options.memory_budget))
                    started.append(kp.deferred)
            else:
                kp = key_plan(plan, store.stat, keyed)
            keyed[plan.name] = kp
            aux = aux_files(plan, options.copy_tokenizer, options.write_card)
            status = compare(kp, aux.key, force=options.force)
            if not status.up_to_date and not options.dry_run:  # it will compute: import torch meanwhile
                if not _bits_only(status, store, _driver_device(options)):
                    preload("torch")
                for module in _warm_modules(plan):
                    preload(module)
            out.append((plan, kp, status, aux))
            watched.paths.append(plan.out_dir)
            watched.outputs.append(plan.out_dir)
            watched.messages += _warning_lines(plan)
    except BaseException:  # a later target failed to plan: stop the reading already started
        for deferred in started:
            deferred.close()
        raise
    if lock is not None and out:
        check_plans(lock, [row[0] for row in out], store.stat.digests, planner.base_dir)
    watched.paths += [str(lock_path(mf.path)), *planner.resolver.folders]
    watched.stampable = watched.stampable and not planner.resolver.unpinned_hub
    return out


def pack_shards(plan: TargetPlan, max_bytes: int) -> dict:
    """``plan``'s layer groups (in shard order) packed into shards of at most ``max_bytes``."""
    from mergefile.io.shards import pack_groups

    sizes: dict = {}
    for j in plan.jobs:
        sizes[j.group] = sizes.get(j.group, 0) + j.nbytes
    order = sorted(plan.shard_names, key=plan.shard_names.__getitem__)
    return pack_groups([(g, sizes.get(g, 0)) for g in order], max_bytes)


def _warning_lines(plan: TargetPlan) -> list[str]:
    """What a plan warns, as printed (a stamped no-op prints the same lines)."""
    return [f"warning: {plan.name}: {w}" for w in plan.warnings]


def compute_any(job: TensorJob, kp: KeyedPlan, loader, blobs, device: str) -> tuple[RawTensor, JobResult]:
    """One job computed and stored: from bf16 bits without torch where its method can
    (``run/compute_bits.py``), else by the torch steps. The result as bytes, for the writer."""
    out = compute_bits(job, kp, loader, blobs, device)
    if out is not None:
        return out
    tensor, res = compute_job(job, kp, loader, blobs, device)
    return raw_tensor(tensor), res


def _may_need_torch(mf: Mergefile) -> bool:
    """Whether a build that must hash inputs (they are new or changed) will likely need torch: a
    target whose method has no torch-free path, or selects per model (new inputs, new
    selections). A task_arithmetic recipe does not; ``plan_build`` decides for the rest."""
    for s in mf.statements:
        name = getattr(s, "method", None)
        if name is None:
            continue
        try:
            method = get_method(name)
        except Exception:  # noqa: BLE001 - the planner reports it; here it only means "maybe"
            return True
        if method.bits is None or method.stage is not None:
            return True
    return False


def _bits_only(st: TargetStatus, store: Store, device: str) -> bool:
    """Whether every job this target will compute takes the torch-free path (then torch is not
    imported ahead; a job that falls back imports it when it needs it)."""
    return all(takes_bits(job, st.kp, store.blobs, device) for job in _needs_compute(st, store))


def big_first(jobs: list[TensorJob], slots: int) -> list[TensorJob]:
    """``jobs`` with the few that are each over 1/(4 x slots) of the total moved to the front.

    Why: in plan order the embedding and ``lm_head`` — each ~14% of a small Llama — come first
    and last, and the last one then runs alone while the other slots idle (0.7 s of a 6 s weight
    edit on 2 cores). Started first, they overlap the layers. The output is the same: shards
    are written when complete, whatever the order. Not for deferred keys, whose reading order
    the merges follow."""
    total = sum(j.nbytes for j in jobs)
    cut = total / (4 * max(1, slots))
    big = [j for j in jobs if j.nbytes > cut]
    if not big or len(big) == len(jobs):
        return jobs
    ids = {id(j) for j in big}
    return big + [j for j in jobs if id(j) not in ids]


def _needs_compute(st: TargetStatus, store: Store) -> list[TensorJob]:
    """Jobs whose result is neither in the cache nor, with the same key, in the current output
    folder, but is needed by a shard being written."""
    plan, kp = st.kp.plan, st.kp
    if kp.deferred is not None:  # a cold target: each job looks in the store itself
        return [job for job in plan.jobs if plan.shard_of(job) in st.write_shards]
    held = in_previous_output(st)
    return [
        job
        for job in plan.jobs
        if plan.shard_of(job) in st.write_shards and kp.keys[job.name] not in store.blobs and job.name not in held
    ]


def _estimate(report: TargetReport, st: TargetStatus, store: Store, options: BuildOptions) -> None:
    plan = st.kp.plan
    jobs = _needs_compute(st, store)
    report.to_compute = [j.name for j in jobs]
    report.est_read = sum(job_input_bytes(j, plan) for j in jobs)
    report.est_write = sum(j.nbytes for j in plan.jobs if plan.shard_of(j) in st.write_shards)
    peaks = sorted((job_peak_bytes(j, plan, options.device) for j in jobs), reverse=True)
    report.est_peak = min(sum(peaks[: max(1, options.jobs)]), max(options.memory_budget, peaks[0] if peaks else 0))


def build(
    mf: Mergefile,
    requested: Sequence[str],
    store: Store,
    options: BuildOptions,
    progress: Progress | None = None,
    argv: Sequence[str] = (),
    executor: Executor | Callable[[], Executor] | None = None,
) -> BuildReport:
    """Bring the requested targets up to date (or, with dry_run, say what that would take).

    Args:
        executor: where tensor work runs, or a function making it (called only when there is
            work: the CLI starts Ray there); default: the one ``options.executor`` names.
    """
    progress = progress or Progress()
    _check_device(options.device, options.executor)
    hook = store.stat.before_hash
    if not options.dry_run and _may_need_torch(mf):  # inputs to hash: it will compute; import torch meanwhile
        store.stat.before_hash = lambda: preload("torch")
    try:
        watched = Watched()
        defer = not options.dry_run and options.executor == "local" and read_once_mode() != "never"
        planned = plan_build(mf, requested, store, options, progress, watched, defer=defer)
    finally:
        store.stat.before_hash = hook
    reports: list[TargetReport] = []
    todo: dict[str, tuple] = {}
    run = None if options.dry_run else store.log.start_run(list(argv))
    failed: dict[str, str] = {}
    try:
        for plan, kp, st, aux in planned:
            report = TargetReport(plan.name, st)
            reports.append(report)
            for line in _warning_lines(plan):
                progress.message(line)
            _estimate(report, st, store, options)
            if options.dry_run or st.up_to_date:
                if run is not None:
                    run.record(target=plan.name, status="up-to-date" if st.up_to_date else "stale")
                continue
            todo[plan.name] = (plan, kp, st, aux, report)
        if todo:
            if executor is None:
                peaks = []
                for plan, _, _, _, report in todo.values():
                    names = set(report.to_compute)
                    peaks += [job_peak_bytes(j, plan, options.device) for j in plan.jobs if j.name in names]
                executor = make_executor(options, concurrent_budget(peaks, options.jobs, options.memory_budget))
            elif not hasattr(executor, "run"):
                executor = executor()

            def build_one(name: str, stop: threading.Event) -> None:
                try:
                    _build_target(*todo[name][:4], store, options, progress, todo[name][4], run, executor, stop)
                except BaseException as e:  # the run log says which target failed, and why
                    failed[name] = failure_line(e)
                    raise

            run_targets(list(todo), _prerequisites(mf, list(todo)), build_one, options.jobs)
    finally:
        for _, kp, _, _ in planned:
            if kp.deferred is not None:  # stop hashing ahead (a target not built: an earlier failed)
                kp.deferred.close()
        if run is not None:
            run.close(
                targets=[r.name for r in reports],
                computed=sum(r.computed for r in reports),
                hits=sum(r.cache_hits for r in reports),
                stage_hits=sum(r.stage_hits for r in reports),
                stage_misses=sum(r.stage_misses for r in reports),
                bytes_read=sum(r.bytes_read for r in reports),
                bytes_written=sum(r.bytes_written for r in reports),
                failed=dict(failed),
            )
    return BuildReport(reports, watched)


def failure_line(e: BaseException) -> str:
    """One line for the run log: the user error's message, or the exception's type and text."""
    from mergefile.errors import UserError

    if isinstance(e, UserError):
        return f"mergebuild: error: {e.render()}".splitlines()[0]
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return f"{type(e).__name__}: {e}".splitlines()[0]


def concurrent_budget(peaks: Sequence[int], jobs: int, budget: int) -> int:
    """The local executor's byte budget for one build: the largest job's peak plus ``jobs - 1``
    typical (median) ones, within ``budget``.

    A quarter of RAM lets ``-j 2`` merge the two largest tensors at once (``embed_tokens`` and
    ``lm_head``, each several times a layer's matrices), which sets the build's peak RSS; with this
    cap the largest jobs run beside typical ones but not beside each other, so the peak stays
    near one large job's while the layers still run ``jobs`` at a time (one job always may run).
    """
    if jobs <= 1 or not peaks:
        return budget
    ordered = sorted(peaks)
    return max(1, min(budget, ordered[-1] + (jobs - 1) * ordered[len(ordered) // 2]))


def make_executor(options: BuildOptions, memory_budget: int | None = None) -> Executor:
    """The executor ``options.executor`` names (Ray imported only for ``ray``); a local one holds
    ``memory_budget`` bytes at once (default ``options.memory_budget``)."""
    if options.executor == "ray":
        from mergefile.run.ray_executor import RayExecutor

        return RayExecutor(options.jobs, options.memory_budget, options.device)
    return LocalExecutor(options.jobs, memory_budget or options.memory_budget)


def _prerequisites(mf: Mergefile, names: list[str]) -> dict[str, set[str]]:
    """For each target to build, the ones among ``names`` it needs (directly or not)."""
    import networkx as nx

    from mergefile.plan.graph import normalize_name

    g = build_graph(mf)
    norm = {normalize_name(n): n for n in names}
    return {n: {norm[a] for a in nx.ancestors(g, normalize_name(n)) if a in norm} for n in names}


def _build_target(
    plan,
    kp,
    st,
    aux,
    store: Store,
    options,
    progress: Progress,
    report: TargetReport,
    run,
    executor: Executor,
    stop: threading.Event | None = None,
) -> None:
    from mergefile.io.reader import TensorReader

    t0 = time.perf_counter()

    def on_wait(pid):
        progress.message(f"waiting: {plan.out_dir} is being built by another mergebuild (pid {pid})")

    with output_lock(plan.out_dir, wait=options.wait_for_lock, on_wait=on_wait):
        aux2 = aux_files(plan, options.copy_tokenizer, options.write_card)
        st = compare(kp, aux2.key, force=options.force)  # someone may have built it while we waited
        report.status = st
        if st.up_to_date:
            return
        reader = TensorReader()
        loader = InputLoader(plan, reader, store.blobs, options.allow_pickle)
        device = _driver_device(options)
        if options.read_to_device and device != "cpu":
            loader = DeviceLoader(loader, device)
        need = _needs_compute(st, store)
        if kp.deferred is not None:  # (a no-op for the target that started reading while planning)
            kp.deferred.readahead(need, readahead_window(options.memory_budget))
        else:  # keys known: nothing waits on the reading order
            need = big_first(need, options.jobs)
        progress.start_target(plan.name, len(need))
        items = _scheduled_jobs(plan, kp, need, loader, store, options, executor)
        jobs_by_name = {j.name: j for j in plan.jobs}
        computed = {j.name for j in need}
        previous = in_previous_output(st)  # unchanged tensors the current folder holds
        headers: dict = {}

        def fetch(name: str) -> RawTensor:
            key = kp.keys[name]
            t = store.blobs.get_raw(key, verify=True)  # bytes, no torch: a cached tensor is copied
            source = "cache"
            if t is None and name in previous:  # not cached (evicted, or not kept): copy it from the folder
                t, source = _from_output(reader, previous[name], name, headers), "output"
            if t is None:  # evicted or corrupt since: recompute
                t, res = compute_any(jobs_by_name[name], kp, loader, store.blobs, device)
                report.computed += 1
                run.record(target=plan.name, tensor=name, key=key, status="recomputed", bytes_read=res.bytes_read)
            elif name not in computed:
                if source == "output":
                    report.from_output += 1
                else:
                    report.cache_hits += 1
                run.record(
                    target=plan.name,
                    tensor=name,
                    key=key,
                    status="hit",
                    bytes_saved=job_input_bytes(jobs_by_name[name], plan),
                    source=source,
                )
            return t

        def spill(name: str, tensor) -> int:  # a result the cache policy did not keep, dropped by the writer
            return store.blobs.put_raw(kp.keys[name], tensor if isinstance(tensor, RawTensor) else raw_tensor(tensor))

        writer = OutputWriter(
            plan,
            kp.keys,
            kp.recipes,
            st.reuse_shards,
            aux2,
            fetch,
            computed,
            keep_bytes=options.memory_budget // 2,
            spill=spill,
        )
        try:
            for _item, out in executor.run(items):
                if stop is not None and stop.is_set():
                    raise Cancelled(plan.name)
                res = absorb(out, store.blobs)
                if res.status == "hit":  # a deferred job's key found in the store (a resumed build)
                    report.cache_hits += 1
                    run.record(
                        target=plan.name,
                        tensor=res.name,
                        key=res.key,
                        status="hit",
                        bytes_saved=job_input_bytes(jobs_by_name[res.name], plan),
                    )
                else:
                    report.computed += 1
                    run.record(
                        target=plan.name,
                        tensor=res.name,
                        key=res.key,
                        status="computed",
                        seconds=round(res.seconds, 6),
                        bytes_read=res.bytes_read,
                        bytes_written=res.bytes_written,
                        stage_hits=res.stage_hits,
                        stage_misses=res.stage_misses,
                    )
                report.stage_hits += res.stage_hits
                report.stage_misses += res.stage_misses
                report.bytes_read += res.bytes_read
                report.bytes_written += res.bytes_written
                progress.advance(plan.name, 1, res.bytes_read)
                tensor, res.tensor = res.tensor, None
                writer.add(res.name, tensor)  # its shard is written as soon as it is complete
                del tensor
            report.bytes_written += writer.finish() + writer.spilled
            report.built = True
        except BaseException:
            writer.abort()
            raise
        finally:
            if kp.deferred is not None:
                kp.deferred.close()
            reader.close()
            progress.end_target(plan.name)
    report.seconds = time.perf_counter() - t0


def _from_output(reader, shard: str, name: str, headers: dict) -> RawTensor | None:
    """Tensor ``name`` of an output shard, as bytes (None when the file no longer holds it).
    ``headers`` keeps each shard's parsed header for the next tensor."""
    from mergefile.io.header import read_header

    try:
        if shard not in headers:
            headers[shard] = read_header(shard)[0]
        info = headers[shard].get(name)
        return None if info is None else RawTensor(info.dtype, tuple(info.shape), reader.get_raw(info))
    except (OSError, UserError):
        return None


def _driver_device(options: BuildOptions) -> str:
    """Where this process computes: Ray workers may have a GPU the driver lacks."""
    if options.device.startswith("cuda") and options.executor != "local" and not torch.cuda.is_available():
        return "cpu"
    return options.device


def _scheduled_jobs(
    plan: TargetPlan,
    kp: KeyedPlan,
    need: list[TensorJob],
    loader,
    store: Store,
    options: BuildOptions,
    executor: Executor,
) -> list[ScheduledJob]:
    """Each job scheduled: a closure over this target's loader, and for remote executors the
    portable job."""
    remote = getattr(executor, "remote", False)
    hub = hub_file_names(plan) if remote else None
    device = _driver_device(options)

    def work(job: TensorJob):
        def run():
            try:
                return merge_one()
            except (UserError, OSError, MemoryError):  # the recipe's, or the machine's: said as such
                raise
            except Exception as e:  # noqa: BLE001 - named for the user instead of a traceback
                raise TensorFailed(plan.name, job.name, job.method, e) from e

        def merge_one():
            if kp.deferred is not None:
                key = kp.deferred.key_job(job)  # hashes its inputs: the merge reads them cached
                t = store.blobs.get_raw(key, verify=True)
                if t is not None:
                    return JobResult(job.name, key, "hit", 0.0, 0, 0, tensor=t)
            t, res = compute_any(job, kp, loader, store.blobs, device)
            res.tensor = t  # handed to the output writer, which writes its shard from memory
            return res

        return run

    def derive(ref, key: str):
        """A LoRA-applied or gate input for a remote task: made here and cached for the workers
        (or, for a tensor read straight from a file, that file's byte range)."""
        source = plan.inputs[ref.model].source
        plain = getattr(source, "file_tensor", None)
        info = plain(ref.tensor) if plain is not None else None
        if info is None and key not in store.blobs:
            t, _ = loader.load(ref, key)
            if key not in store.blobs:  # a source that reads rather than makes this tensor
                store.blobs.put(key, t.detach().to("cpu").contiguous())
        return info

    def portable(job: TensorJob):
        return make_portable(
            job,
            kp,
            str(store.blobs.directory),
            store.blobs.size_limit,
            options.device,
            options.read_to_device,
            options.allow_pickle,
            hub,
            derive,
        )

    return [
        ScheduledJob(j.name, work(j), job_peak_bytes(j, plan, options.device), portable(j) if remote else None)
        for j in need
    ]


def default_memory_budget() -> int:
    """A quarter of physical memory, at least 1 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return max(2**30, total // 4)
