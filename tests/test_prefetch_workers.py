"""georecon_jax/training/prefetch.py with worker processes (data.workers): the same batches as the
thread, in order, from any start; a worker's error or death stops the consumer with that error;
SIGTERM to a run with workers still checkpoints and exits cleanly, leaving no worker behind."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT
from georecon_jax.graphs.batching import GraphBatcher
from georecon_jax.training.prefetch import Prefetcher, resolve_workers


def _take(fetcher, n):
    try:
        return [fetcher.get() for _ in range(n)]
    finally:
        fetcher.close()


@pytest.mark.parametrize("layout", ["pairs", "dense"])
def test_worker_batches_are_bit_identical_to_the_thread_s(qm9_small, layout):
    mols, splits = qm9_small
    batcher = GraphBatcher(mols, splits["train"], 16, num_devices=2, seed=3, layout=layout)
    # 40 batches from an epoch's last but one: groups of 16 made by both workers in turn, a new
    # permutation at the epoch boundary, and a partial last group
    start, n = batcher.steps_per_epoch - 2, 40
    thread = _take(Prefetcher(batcher.batch, start, start + n), n)
    workers = _take(Prefetcher(batcher.batch, start, start + n, workers=2), n)
    assert [k for k, _ in workers] == list(range(start, start + n))
    for (_, a), (_, b) in zip(thread, workers):
        leaves_a, tree_a = jax.tree_util.tree_flatten(a)
        leaves_b, tree_b = jax.tree_util.tree_flatten(b)
        assert tree_a == tree_b
        assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


class Failing:
    """make_batch that raises at batch ``bad`` (a module-level class: workers unpickle it)."""

    def __init__(self, bad, die=False):
        self.bad, self.die = bad, die

    def __call__(self, k):
        if k == self.bad:
            if self.die:
                os._exit(7)  # a worker killed mid-batch (out of memory, SIGKILL)
            raise ValueError(f"molecule record of batch {k} is broken")
        return {"k": np.full((2,), k, np.int64)}


def test_a_worker_that_raises_stops_the_consumer_with_its_error():
    fetcher = Prefetcher(Failing(5), 2, 20, workers=2)
    try:
        got = [fetcher.get()[0] for _ in range(3)]
        with pytest.raises(ValueError, match="batch 5 is broken") as err:
            fetcher.get()
        assert "in batch 5, made in a worker process" in "\n".join(err.value.__notes__)
    finally:
        fetcher.close()
    assert got == [2, 3, 4]


def test_a_worker_that_dies_stops_the_consumer():
    fetcher = Prefetcher(Failing(4, die=True), 0, 50, workers=2)
    try:
        with pytest.raises(RuntimeError, match="exit code 7"):
            for _ in range(50):
                fetcher.get()
    finally:
        fetcher.close()


def test_resolve_workers():
    assert resolve_workers(0) == 0 and resolve_workers("3") == 3 and resolve_workers(2) == 2
    assert resolve_workers("auto", local_devices=8, cores=2) == 0  # a thread on 2 cores
    assert resolve_workers("auto", local_devices=1, cores=16) == 4  # 4 per device
    assert resolve_workers("auto", local_devices=8, cores=96) == 32
    assert resolve_workers("auto", local_devices=8, cores=10) == 8
    for bad in (-1, "many", 1.5, True):
        with pytest.raises(ValueError, match="data.workers"):
            resolve_workers(bad)


def test_auto_workers_count_the_cores_this_process_may_use(monkeypatch):
    """A container or ``taskset`` share of a big host: 'auto' sizes from the affinity mask."""
    import os

    from georecon_jax.training import prefetch

    monkeypatch.setattr(os, "cpu_count", lambda: 96)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert prefetch.usable_cores() == 6
    assert resolve_workers("auto", local_devices=8) == 4


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_sigterm_with_workers_checkpoints_and_exits_cleanly(tmp_path, cache_dir):
    """A tiny Coord pretraining with 2 batch workers, stopped by SIGTERM to its whole process group
    (as a scheduler or `timeout` sends it: the workers die with it) once training runs: exit code
    0, a checkpoint at the step it reached, no worker left; the same command resumes and finishes."""
    work = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "experiments.pretrain",
        "--config=experiments/configs/coord.py:tiny",
        "--config.num_steps=400",
        "--config.checkpoint_every=1000",
        "--config.eval_every=1000",
        "--config.data.workers=2",
        f"--workdir={work}",
    ]
    env = dict(os.environ, GEORECON_CACHE=cache_dir)
    proc = subprocess.Popen(  # its own process group, as under a scheduler
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline, workers = time.time() + 240, []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1.0)
        workers = _children(proc.pid)
        logged = (work / "metrics.jsonl").exists() and '"train"' in (work / "metrics.jsonl").read_text()
        if len(workers) >= 2 and logged:  # training steps are logged, the workers feed them
            break
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert len(workers) >= 2, workers  # the two batch workers (and grain's resource tracker)
    os.killpg(proc.pid, signal.SIGTERM)  # to the whole group: the batch workers get it too
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    steps = [int(s) for s in os.listdir(work / "checkpoints") if s.isdigit()]
    assert steps and 0 < max(steps) < 400, out[-2000:]
    time.sleep(1.0)
    alive = [p for p in workers if os.path.exists(f"/proc/{p}") and "zombie" not in _state(p)]
    assert not alive, f"worker processes left running: {alive}"
    again = subprocess.run(
        [*cmd[:4], "--config.num_steps=" + str(max(steps) + 4), *cmd[5:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from the checkpoint at step {max(steps)}" in (again.stdout + again.stderr).lower()


def _state(pid) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return f.read().lower()
    except FileNotFoundError:
        return "zombie"


def test_pack_keeps_every_dtype_bfloat16_included():
    from georecon_jax.training.prefetch import _pack, _unpack

    import ml_dtypes

    batches = [
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], ml_dtypes.bfloat16)},
        {"a": np.zeros((0, 3), np.float32), "b": np.array([True, False])},
    ]
    out = _unpack(_pack([7, 8], batches))
    assert [k for k, _ in out] == [7, 8]
    for (_, got), want in zip(out, batches):
        for key in want:
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key])


def test_a_run_resumes_with_another_number_of_workers(tmp_path):
    """data.workers says who makes the batches, not which: a resume with another count is not a
    configuration change (while another data field still is)."""
    from experiments.configs import finetune_qm9
    from georecon_jax.training.loop import ConfigMismatchError, record_config

    config = finetune_qm9.get_config("tiny")
    record_config(config, str(tmp_path), compare_sections=("data",))
    config.data.workers = 4
    record_config(config, str(tmp_path), compare_sections=("data",))
    config.data.split_seed = 1
    with pytest.raises(ConfigMismatchError, match="data.split_seed"):
        record_config(config, str(tmp_path), compare_sections=("data",))


def test_a_bad_worker_count_is_refused_before_anything_runs():
    from experiments.configs import coord
    from georecon_jax.training.runner import loop_problems

    config = coord.get_config("tiny")
    assert not loop_problems(config)
    config.data.workers = "many"
    assert any("data.workers='many'" in p for p in loop_problems(config))
