"""Session options: what loading an artifact does to TVM's thread pool (counts and affinity).

Each case runs in a fresh process, as a user's program does: TVM creates a thread's pool once,
so only a first configuration shows the defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nlpress.ir import Model
from nlpress.targets import SessionOptions, build_artifact, get_target
from nlpress.targets.runtime import FeedError

# Prints the pool's thread count and each thread's allowed CPUs after one run.
PROBE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import nlpress
    kwargs = json.loads(sys.argv[2])
    session = nlpress.load(sys.argv[1], **kwargs)
    x = np.ones((2, 8), np.float32)
    session.run(None, {"x": x, "ids": np.zeros((2, 3), np.int64)})
    import time, tvm
    time.sleep(0.1)  # idle workers sleep with their whole affinity mask
    allowed = {}
    for task in os.listdir("/proc/self/task"):
        allowed[task] = sorted(os.sched_getaffinity(int(task)))
    print(json.dumps({
        "session": session.threads,
        "pool": tvm.get_global_func("runtime.NumThreads")(),
        "main": sorted(os.sched_getaffinity(0)),
        "threads": allowed,
    }))
    """
)


@pytest.fixture(scope="module")
def artifact(tiny_model: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("threads") / "artifact"
    return build_artifact(tiny_model, get_target("x86"), out, manifest={"pipeline": "fold"})


def probe(artifact: Path, cpus: list[int] | None = None, env: dict[str, str] | None = None,
          **kwargs: object) -> dict[str, object]:  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TVM_", "OMP_"))}
    command = [sys.executable, "-c", PROBE, str(artifact), json.dumps(kwargs)]
    if cpus is not None:
        command = ["taskset", "-c", ",".join(map(str, cpus)), *command]
    done = subprocess.run(
        command, env={**clean, **(env or {})}, capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_default_is_one_thread_per_usable_cpu_unpinned(artifact: Path) -> None:
    usable = sorted(os.sched_getaffinity(0))
    facts = probe(artifact)
    assert facts["session"] == facts["pool"] == len(usable)
    # No worker is bound to one core: every thread may run on every usable CPU.
    assert all(cpus == usable for cpus in facts["threads"].values())  # type: ignore[attr-defined]


def test_affinity_mask_sets_the_default(artifact: Path) -> None:
    facts = probe(artifact, cpus=[0])
    assert facts["session"] == facts["pool"] == 1
    assert facts["main"] == [0]


def test_explicit_threads_win(artifact: Path) -> None:
    facts = probe(artifact, threads=3, env={"TVM_NUM_THREADS": "1"})
    assert facts["session"] == facts["pool"] == 3


def test_fewer_threads_leave_the_callers_affinity_alone(artifact: Path) -> None:
    facts = probe(artifact, threads=1)
    assert facts["session"] == facts["pool"] == 1
    assert facts["main"] == sorted(os.sched_getaffinity(0))


def test_user_set_environment_is_respected(artifact: Path) -> None:
    facts = probe(artifact, env={"TVM_NUM_THREADS": "1"})
    assert facts["session"] == facts["pool"] == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs to show")
def test_pin_binds_each_worker_to_one_cpu(artifact: Path) -> None:
    facts = probe(artifact, pin=True, threads=2)
    assert facts["pool"] == 2
    single = [cpus for cpus in facts["threads"].values() if len(cpus) == 1]  # type: ignore[attr-defined]
    assert single, facts["threads"]


@pytest.mark.parametrize("threads", [-1, 1.5, True])
def test_bad_thread_counts_are_refused(threads: object) -> None:
    with pytest.raises(FeedError, match="threads"):
        SessionOptions(threads=threads)  # type: ignore[arg-type]


def test_parallel_loops_run_on_the_artifacts_own_launcher(artifact: Path) -> None:
    from nlpress.targets import load

    assert load(artifact).launcher == "nlpress"
    assert load(artifact, pin=True).launcher == "tvm"  # pinned workers are TVM's own pool


# Prepended to the launcher scripts: the fields of a thread's /proc stat (after its name), and
# the id of the launcher's worker, once a session has started it.
WORKER = textwrap.dedent(
    """
    import os
    def stat(task):
        return open(f"/proc/self/task/{task}/stat").read().rsplit(")", 1)[1].split()
    def worker_task():
        (task,) = [int(t) for t in os.listdir("/proc/self/task")
                   if open(f"/proc/self/task/{t}/comm").read().strip() == "nlpress-worker"]
        return task
    """
)


def run_launcher_script(script: str, artifact: Path) -> list[int]:
    """Run `script` (after WORKER) in a fresh process on `artifact`; the ints it prints."""
    command = [sys.executable, "-c", WORKER + textwrap.dedent(script), str(artifact)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return [int(word) for word in done.stdout.split()]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_worker_woken_on_its_callers_cpu_steps_aside(tmp_path: Path) -> None:
    """Some schedulers put a woken worker on the CPU of the thread that woke it, where the two
    take turns: the launcher's worker then moves itself to another CPU of its mask."""
    import graphs
    import numpy as np

    rng = np.random.default_rng(0)
    big = graphs.dense(["batch", 256], rng.standard_normal((256, 512)).astype(np.float32))
    out = build_artifact(big, get_target("x86"), tmp_path / "big", manifest={})
    first = min(os.sched_getaffinity(0))
    stepped, cpu = run_launcher_script(
        f"""
        import ctypes, glob, sys, time
        import numpy as np
        import nlpress
        session = nlpress.load(sys.argv[1], threads=2)
        x = np.ones((64, 256), np.float32)
        session.run(None, {{"x": x}})
        worker = worker_task()
        library = ctypes.CDLL(glob.glob(sys.argv[1] + "/*.so")[0], mode=os.RTLD_NOLOAD)
        os.sched_setaffinity(0, {{{first}}})  # the caller, on the first CPU
        time.sleep(0.1)  # the worker sleeps
        os.sched_setaffinity(worker, {{{first}}})  # and wakes there, where the caller runs
        for _ in range(50):  # until the worker joins a loop before the caller finishes it
            session.run(None, {{"x": x}})
            if library.nlpress_parallel_stepped_aside():
                break
        print(library.nlpress_parallel_stepped_aside(), stat(worker)[36])  # field 39: its CPU
        """,
        out,
    )
    assert stepped >= 1 and cpu != first, (stepped, cpu)


def test_an_idle_worker_sleeps(artifact: Path) -> None:
    """Between runs a worker spins for a moment, then sleeps: an idle second costs no core."""
    used, per_second = run_launcher_script(
        """
        import sys, time
        import numpy as np
        import nlpress
        session = nlpress.load(sys.argv[1], threads=2)
        session.run(None, {"x": np.ones((2, 8), np.float32), "ids": np.zeros((2, 3), np.int64)})
        def ticks(task):  # user and system time
            return int(stat(task)[11]) + int(stat(task)[12])
        before = ticks(worker_task())
        time.sleep(1.0)
        print(ticks(worker_task()) - before, os.sysconf("SC_CLK_TCK"))
        """,
        artifact,
    )
    assert used <= per_second // 20, (used, per_second)  # at most 50 ms of CPU in that second


def test_sessions_run_from_several_threads_at_once_agree(tiny_model: Model, tmp_path: Path) -> None:
    """One session run from several threads (runs take turns), and one session per thread
    (they share the library's launcher: a run that finds it busy runs its loops alone)."""
    import threading

    import graphs
    import numpy as np

    from nlpress.ir.verify import run
    from nlpress.targets import load

    rng = np.random.default_rng(0)
    big = graphs.dense(["batch", 256], rng.standard_normal((256, 512)).astype(np.float32))
    out = build_artifact(big, get_target("x86"), tmp_path / "big", manifest={})
    session = load(out, threads=2)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    expected = run(big, {"x": x})["y"]
    failures: list[str] = []

    def work(own: bool) -> None:
        mine = load(out, threads=2) if own else session
        for _ in range(20):
            (got,) = mine.run(None, {"x": x})
            if not np.allclose(got, expected, atol=1e-4, rtol=1e-5):
                failures.append("mismatch")

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
