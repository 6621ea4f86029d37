"""MetaSchedule tuning on top of the default schedules, with records a later build reuses.

`tune` searches schedules for a model's CPU kernels and stores them in a records folder (a
MetaSchedule JSON database). Candidates are measured on this machine, or, given a
`remote.Board`, on the boards registered under its key at an RPC tracker, one worker per board.
A build given that folder (`lower.build(..., records=DIR)`, `build_artifact(..., records=DIR)`)
takes each kernel's best tuned schedule from it and schedules the rest with the default rules,
without tuning again. Records are keyed by the kernel's structure, so they serve every model and
shape that has the same kernels on the same target.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nlpress.ir.progress import Advance, step
from nlpress.targets import remote
from nlpress.targets.remote import Board
from nlpress.targets.target import Target, TargetError

log = logging.getLogger(__name__)

# Seconds a MetaSchedule build or run worker may take; a fresh worker imports TVM first, and
# on a loaded machine that alone can take half a minute (MetaSchedule's default is 30 s).
WORKER_TIMEOUT = 180
# Timed calls of a default schedule when it is stored as a record (the median counts).
SEED_REPEAT = 9

KernelTimer = Callable[[Any], float]  # a scheduled PrimFunc -> seconds per call


def has_records(records: str | os.PathLike[str]) -> bool:
    """Whether `records` holds a MetaSchedule database."""
    folder = Path(records)
    return (folder / "database_workload.json").is_file() and (
        folder / "database_tuning_record.json"
    ).is_file()


def record_count(records: str | os.PathLike[str]) -> int:
    """How many measured schedules `records` holds (0 for a folder without a database)."""
    path = Path(records) / "database_tuning_record.json"
    if not path.is_file():
        return 0
    with open(path) as lines:
        return sum(1 for line in lines if line.strip())


def tune(
    mod: Any,
    target: Target,
    trials: int,
    records: str | os.PathLike[str],
    *,
    seed: int = 0,
    board: Board | None = None,
) -> Path:
    """Tune the CPU kernels of a Relax module with MetaSchedule; records go to `records`.

    Args:
        mod: The Relax module from `lower.import_onnx`.
        target: A CPU target descriptor.
        trials: Total measured candidates over all kernels (e.g. 64 per kernel that matters).
        records: The records folder; created if missing, added to if it has records already.
        seed: The search's random seed.
        board: Measure on the boards of this key (any CPU target), not on this machine.

    Returns:
        The records folder.

    Raises:
        TargetError: A target this machine cannot run (arm, cuda, another x86 CPU) without a
            board, or a GPU target.

    """
    from tvm.s_tir import meta_schedule as ms

    from nlpress.targets import lower

    _check_measurable(target, board)
    folder = Path(records)
    folder.mkdir(parents=True, exist_ok=True)
    cores = board.threads() if board else os.cpu_count() or 1
    tvm_target = tuning_target(target, cores)
    builder, runner = measurers(target, board)
    with lower.native_log():
        kernels, _ = lower.cpu_kernels(mod, tvm_target, default_schedules=False)
    if board is None:
        seeded = seed_with_defaults(kernels, tvm_target, folder)
    else:
        with remote.kernel_timer(board, tvm_target, target.cross_compiler) as timer:
            seeded = seed_with_defaults(kernels, tvm_target, folder, timer)
    log.info("tuning: %d kernels start from their default schedules", seeded)
    with _quiet_tvm(), step("tuning: measured candidates", trials) as advance:
        callbacks = [*ms.MeasureCallback.create("default"), _progress_callback(trials, advance)]
        ms.relax_integration.tune_relax(
            kernels,
            params={},
            target=tvm_target,
            work_dir=os.fspath(folder),
            max_trials_global=trials,
            num_trials_per_iter=min(64, max(trials, 1)),
            builder=builder,
            runner=runner,
            measure_callbacks=callbacks,
            seed=seed,
        )
    return folder


def _check_measurable(target: Target, board: Board | None) -> None:
    if target.device != "cpu":
        raise TargetError(f"tuning schedules CPU kernels; {target.name} is not a CPU target")
    if board is None and not target.runs_on_host:
        raise TargetError(
            "tuning measures kernels on this machine: it needs the x86 target of this host's "
            f"CPU (no --mcpu), not {target.name}, or a board of that CPU (--rpc HOST:PORT "
            "--key KEY)"
        )


def measurers(target: Target, board: Board | None) -> tuple[Any, Any]:
    """MetaSchedule's builder and runner: local, or shared libraries measured on the boards."""
    import functools

    from tvm.s_tir import meta_schedule as ms

    if board is None:
        return (
            ms.builder.LocalBuilder(timeout_sec=WORKER_TIMEOUT),
            ms.runner.LocalRunner(timeout_sec=WORKER_TIMEOUT),
        )
    export = functools.partial(remote.export_library, target.cross_compiler)
    builder = ms.builder.LocalBuilder(timeout_sec=WORKER_TIMEOUT, f_export=export)
    return builder, remote.tuning_runner(board, WORKER_TIMEOUT)


@contextlib.contextmanager
def _quiet_tvm() -> Iterator[None]:
    """Keep MetaSchedule's per-task INFO logs out of the user's log (they go to files)."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def seed_with_defaults(
    kernels: Any, tvm_target: Any, records: Path, timer: KernelTimer | None = None
) -> int:
    """Store each kernel's default schedule, timed by `timer` (here by default), as a record.

    The search then starts from it, and a kernel whose tuned schedules all measured slower
    keeps its default one. Each kernel is timed alone, so on a loaded machine a record can
    still lose in the whole model: compare both with `nlpress bench --vs-ort`.

    Returns:
        How many kernels got a record.

    """
    from tvm.s_tir import meta_schedule as ms

    from nlpress.targets import schedules
    from nlpress.targets.bench import time_kernel

    timer = timer or (lambda func: time_kernel(func, tvm_target, SEED_REPEAT) / 1e3)
    database = ms.database.JSONDatabase(work_dir=os.fspath(records))
    seeded = 0
    for task in ms.relax_integration.extract_tasks(kernels, tvm_target):
        workload_mod = task.dispatched[0]
        func = workload_mod["main"]
        sch = schedules.schedule_func(func, tvm_target, name=task.task_name)
        if sch is None or not sch.trace.insts:
            continue  # a stitched schedule has no trace to replay: the build applies the rule
        record = ms.database.TuningRecord(
            sch.trace,
            database.commit_workload(workload_mod),
            [timer(sch.mod["main"])],
            tvm_target,
            ms.arg_info.ArgInfo.from_prim_func(func),
        )
        database.commit_tuning_record(record)
        seeded += 1
    return seeded


def tune_model(
    model: Any,
    target: Target,
    trials: int,
    records: str | os.PathLike[str],
    board: Board | None = None,
) -> Path:
    """`tune` for an ONNX ModelProto (after fold, with the shapes it will be built with)."""
    from nlpress.targets import lower

    return tune(lower.import_onnx(model), target, trials, records, board=board)


def tuning_target(target: Target, cores: int) -> Any:
    """The tvm Target MetaSchedule measures on: the descriptor's, with the board's core count."""
    import tvm

    return tvm.target.Target({**dict(target.tvm_target), "num-cores": cores})


def _progress_callback(trials: int, advance: Advance) -> Any:
    """A MeasureCallback that reports the measured candidates and the kernel after each batch."""
    from tvm.s_tir.meta_schedule.measure_callback.measure_callback import _PyMeasureCallback

    began = time.perf_counter()
    measured = [0]

    def apply(scheduler: Any, task_id: int, candidates: Any, builds: Any, runs: Any) -> None:
        measured[0] += len(candidates)
        advance(len(candidates))
        tasks = scheduler.tasks_
        log.info(
            "tuning: %d/%d trials, kernel %d/%d %s, %.0f s",
            measured[0],
            trials,
            task_id + 1,
            len(tasks),
            tasks[task_id].ctx.task_name,
            time.perf_counter() - began,
        )

    return _PyMeasureCallback(apply)
