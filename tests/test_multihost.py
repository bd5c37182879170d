"""Several hosts, for real: 2 processes on 127.0.0.1, each with 2 simulated CPU devices, joined by
JAX's distributed runtime (a coordinator on a free loopback port, gloo collectives between the
processes), run the real entry points and are compared with 1 process on 4 devices.

Every process is started with a time limit and killed in a ``finally``, whatever happens.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from georecon_jax.training.checkpoint import restore_params
from sgd_compare import sgd_params_mismatch


TIMEOUT = 300  # s, for any one launch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd, workdir, num_processes: int, devices_per_process: int, tag: str):
    """Starts ``cmd`` as ``num_processes`` processes of one run; returns the Popen objects (stdout
    and stderr in ``<workdir>.<tag>.<rank>.{out,err}``)."""
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices_per_process}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip())
    if num_processes > 1:
        env.update(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
            JAX_NUM_PROCESSES=str(num_processes),
            GEORECON_HEARTBEAT_TIMEOUT="10",  # s: how long the others wait for a dead process
        )
    procs = []
    for rank in range(num_processes):
        if num_processes > 1:
            env["JAX_PROCESS_ID"] = str(rank)
        base = f"{workdir}.{tag}.{rank}"
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=dict(env), stdout=open(base + ".out", "w"), stderr=open(base + ".err", "w")
            )
        )
    return procs


def finish(procs, workdir, tag):
    """Waits for every process (time limit ``TIMEOUT``); kills them all on the way out."""
    try:
        deadline = time.time() + TIMEOUT
        codes = [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, code in enumerate(codes):
        err = Path(f"{workdir}.{tag}.{rank}.err").read_text()[-3000:]
        assert code == 0, f"process {rank} of {tag} failed ({code}):\n{err}"
    return [Path(f"{workdir}.{tag}.{rank}.out").read_text() for rank in range(len(procs))]


def wait_for_checkpoint(procs, workdir):
    """The checkpointed steps as soon as a first one appears; fails if the run ended before."""
    ck = Path(workdir) / "checkpoints"
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if ck.exists() and any(p.isdigit() for p in os.listdir(ck)):
            return sorted(int(p) for p in os.listdir(ck) if p.isdigit())
        time.sleep(0.05)
    raise AssertionError("the run ended (or hung) before its first checkpoint: the test would prove nothing")


def params(workdir):
    step, tree = restore_params(str(workdir))
    return step, tree["params"]


# SGD, so that runs on other process counts may be compared by their parameters: the update is
# proportional to the gradient, whose float32 summation order is all that differs (tests/sgd_compare.py)
SGD_RATE = 0.05
SGD = ["--config.optim.optimizer=sgd", f"--config.optim.learning_rate={SGD_RATE}"]


def update_scale(workdir, learning_rate=SGD_RATE) -> float:
    """An upper bound of one SGD step's change of any parameter: the rate x the largest gradient
    norm of the run's train rows (each a mean over 2 steps: x 2), or x the clipping norm."""
    rows = [r for r in map(json.loads, open(Path(workdir) / "metrics.jsonl")) if r["split"] == "train"]
    clip = json.load(open(Path(workdir) / "config.json"))["optim"]["grad_clip"]
    norm = 2 * max(r["grad_norm"] for r in rows)
    return learning_rate * (min(norm, clip) if clip > 0 else norm)


def same_run(a, b, workdir, steps) -> bool:
    """Parameters ``a`` and ``b`` after ``steps`` SGD steps agree to float32 rounding."""
    return sgd_params_mismatch(a, b, update_scale(workdir), steps=steps) <= 1.0


def pretrain_cmd(workdir, cache_dir):
    return [
        sys.executable,
        "-m",
        "experiments.pretrain",
        "--config=experiments/configs/coord.py:tiny",
        f"--config.data.cache_dir={cache_dir}",
        "--config.num_steps=8",
        "--config.checkpoint_every=2",
        "--config.eval_every=4",
        *SGD,
        f"--workdir={workdir}",
    ]


@pytest.mark.slow
def test_two_processes_train_as_one_and_resume_across_process_counts(tmp_path, cache_dir, qm9_small):
    """Pretraining through `experiments.pretrain`:
    1. 1 process x 4 devices, straight (the reference);
    2. 2 processes x 2 devices; process 1 is SIGKILLed after the first checkpoint: process 0 stops
       on its own within seconds, naming the dead task; relaunched as 1 process, the run resumes
       from the last complete checkpoint and ends with the reference's parameters;
    3. a 1-process run's checkpoint (an early one of the reference) resumed by 2 processes: the same end,
       and the two processes wrote every metrics row, the config and the summary once."""
    straight = tmp_path / "straight"
    finish(launch(pretrain_cmd(straight, cache_dir), straight, 1, 4, "run"), straight, "run")
    step, reference = params(straight)
    assert step == 8

    # 2. two processes, one dies
    killed = tmp_path / "two_then_one"
    procs = launch(pretrain_cmd(killed, cache_dir), killed, 2, 2, "two")
    try:
        steps = wait_for_checkpoint(procs, killed)
        t0 = time.time()
        procs[1].kill()
        code = procs[0].wait(timeout=90)
        stopped_after = time.time() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    err = Path(f"{killed}.two.0.err").read_text()
    assert code != 0 and stopped_after < 60, (code, stopped_after)
    assert "another task died" in err or "stopped sending heartbeats" in err, err[-2000:]
    assert steps[-1] < 8
    after = sorted(int(p) for p in os.listdir(killed / "checkpoints") if p.isdigit())
    out = finish(launch(pretrain_cmd(killed, cache_dir), killed, 1, 4, "one"), killed, "one")
    assert f"resuming from the checkpoint at step {after[-1]}" in out[0]
    step, resumed = params(killed)
    assert step == 8 and same_run(resumed, reference, straight, steps=8)

    # 3. one process, then two: the straight run's workdir as it was after its oldest kept checkpoint
    # (what a kill right after that checkpoint leaves; part 2 kills for real)
    other = tmp_path / "one_then_two"
    resumed_at = min(int(p) for p in os.listdir(straight / "checkpoints") if p.isdigit())
    assert resumed_at < 8
    (other / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / str(resumed_at), other / "checkpoints" / str(resumed_at))
    for name in ("config.json", "noise_normaliser.json"):
        shutil.copy(straight / name, other / name)
    with open(other / "metrics.jsonl", "w") as f:
        for line in open(straight / "metrics.jsonl"):
            if json.loads(line)["step"] <= resumed_at:
                f.write(line)
    outs = finish(launch(pretrain_cmd(other, cache_dir), other, 2, 2, "two"), other, "two")
    assert all(f"resuming from the checkpoint at step {resumed_at}" in o for o in outs)
    assert "process 1 of 2" in Path(f"{other}.two.1.out").read_text()
    step, resumed = params(other)
    assert step == 8 and same_run(resumed, reference, straight, steps=8)
    rows = [json.loads(line) for line in open(other / "metrics.jsonl")]
    later = [(r["split"], r["step"]) for r in rows if r["step"] > resumed_at]
    assert sorted(later) == sorted(set(later)) and ("train", 8) in later and ("validation", 8) in later
    ref_rows = {(r["split"], r["step"]): r["loss"] for r in map(json.loads, open(straight / "metrics.jsonl"))}
    for r in rows:
        if r["step"] > resumed_at:  # the same losses as the reference, step by step
            assert abs(r["loss"] - ref_rows[(r["split"], r["step"])]) < 1e-5 * max(1.0, abs(r["loss"]))
    assert json.load(open(other / "summary.json"))["steps"] == 8
    assert json.load(open(other / "config.json"))["objective"]["name"] == "coord"
    assert not [p for p in os.listdir(other) if p.endswith(".tmp")]


@pytest.mark.slow
def test_two_processes_fine_tune_and_evaluate_as_one(tmp_path, cache_dir, qm9_small):
    """QM9 fine-tuning through `experiments.finetune` (tiny; validation every 3 steps, test
    evaluation at the end): 2 processes x 2 devices end with the parameters of 1 process x 4
    devices; the validation metrics count each of the 16 validation molecules once (reduced over
    both processes' real molecules, padding excluded) and equal the 1-process ones; the test
    results are written once, by process 0, with the same numbers."""

    def cmd(workdir):
        return [
            sys.executable,
            "-m",
            "experiments.finetune",
            "--config=experiments/configs/finetune_qm9.py:tiny",
            f"--config.data.cache_dir={cache_dir}",
            *SGD,
            "--config.optim.grad_clip=1.0",  # fine-tuning does not clip, and SGD at this rate diverges
            f"--workdir={workdir}",
        ]

    one, two = tmp_path / "one", tmp_path / "two"
    finish(launch(cmd(one), one, 1, 4, "run"), one, "run")
    finish(launch(cmd(two), two, 2, 2, "run"), two, "run")
    (sa, a), (sb, b) = params(one), params(two)
    assert sa == sb == 6 and same_run(a, b, one, steps=6)

    def validation(workdir):
        return [r for r in map(json.loads, open(workdir / "metrics.jsonl")) if r["split"] == "validation"]

    va, vb = validation(one), validation(two)
    assert [r["step"] for r in vb] == [r["step"] for r in va] == [3, 6]
    for x, y in zip(va, vb):
        assert x["num_graphs"] == y["num_graphs"] == 16
        assert abs(x["mae"] - y["mae"]) < 1e-5 * max(1.0, abs(x["mae"]))
    ra, rb = (json.load(open(w / "results.json")) for w in (one, two))
    assert ra["num_molecules"] == rb["num_molecules"] == 16
    for k, m in ra["metrics"].items():
        assert abs(m["value"] - rb["metrics"][k]["value"]) < 1e-5 * max(1.0, abs(m["value"])), k
    assert "process 1 of 2" in Path(f"{two}.run.1.out").read_text()
