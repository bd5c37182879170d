"""The benchmark commands, smoke-tested for what they do (exit status, which commands run, what the
results hold), not for their wording: benchmarks/run.sh checks the 3DMRL pair file before the long
throughput part and skips only that benchmark; the throughput benchmark checks its options, times
the sides in alternating rounds and writes one table row per result. Nothing here trains a model.
"""

import os
import stat
import subprocess
import sys
import textwrap

import numpy as np

from conftest import ROOT


def run_module(*args, env=None):
    env = env or dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


# ------------------------------------------------------------------------ benchmarks/run.sh, 3DMRL


def test_mrl3d_env_check_names_the_missing_pair_file(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("GEORECON_DATA", None)
    r = run_module("benchmarks.mrl3d_env", "--check", "--data-root", str(tmp_path), env=env)
    assert r.returncode == 3, r.stderr  # 3: skip this benchmark
    assert "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert str(tmp_path / "solvation" / "combisolv.csv") in line

    (tmp_path / "solvation").mkdir()
    (tmp_path / "solvation" / "combisolv.csv").write_text("solute,solvent,Gsolv\n")
    r = run_module("benchmarks.mrl3d_env", "--check", "--data-root", str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr


def test_run_sh_checks_the_pair_file_first_and_skips_only_that_benchmark(tmp_path):
    """benchmarks/run.sh with a data folder that lacks the pair file: the check is the first thing
    run, the throughput part still runs (stubbed here), the 3DMRL benchmark is skipped, and the
    command exits 0. `python` and setup_torch_env.sh are stubs that log their calls; only the 3DMRL
    check runs for real."""
    tree = tmp_path / "repo"
    (tree / "benchmarks").mkdir(parents=True)
    (tree / "benchmarks" / "run.sh").write_text((ROOT / "benchmarks" / "run.sh").read_text())
    log = tmp_path / "calls.log"
    (tree / "benchmarks" / "setup_torch_env.sh").write_text(f'echo "setup_torch_env" >> "{log}"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python"
    stub.write_text(
        textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "python $*" >> "{log}"
        if [ "$2" = benchmarks.mrl3d_env ]; then cd "{ROOT}" && exec "{sys.executable}" "$@"; fi
        exit 0
        """)
    )
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    missing = tmp_path / "no_data"
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        GEORECON_DATA=str(missing),
        JAX_PLATFORMS="cpu",
    )
    r = subprocess.run(
        ["bash", str(tree / "benchmarks" / "run.sh"), f"--data-root={missing}", "--rounds", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    calls = log.read_text().splitlines()
    assert calls[0].startswith("python -m benchmarks.mrl3d_env --check"), calls
    assert "python -m benchmarks.throughput --check-args --rounds 1" in calls  # options checked first
    assert "python -m benchmarks.throughput --rounds 1" in calls  # and passed through
    mrl_runs = [c for c in calls if "benchmarks.mrl3d_env" in c]
    assert all("--check" in c for c in mrl_runs), calls  # never run for real
    assert str(missing / "solvation" / "combisolv.csv") in out
    assert "Traceback" not in out


# --------------------------------------------------------------------------- benchmarks.throughput


def test_throughput_checks_its_options_before_anything_long():
    assert run_module("benchmarks.throughput", "--check-args").returncode == 0
    assert (
        run_module("benchmarks.throughput", "--check-args", "--sizes", "cpu", "--layouts", "dense").returncode
        == 0
    )
    for flag, value in (("--sizes", "huge"), ("--objectives", "mae"), ("--layouts", "sparse")):
        r = run_module("benchmarks.throughput", "--check-args", flag, value)
        assert r.returncode == 2 and value in r.stderr and "Traceback" not in r.stderr, (flag, r.stderr)


class FakeBench:
    """A JAX side whose steps take ``seconds``, recording when it ran."""

    def __init__(self, seconds, calls, name):
        self.seconds, self.calls, self.name = seconds, calls, name

    def run(self, ids):
        self.calls.append(self.name)
        return [self.seconds] * len(ids), [1e9] * len(ids), 0.5


class FakeTorch:
    def __init__(self, calls):
        self.calls = calls

    def call(self, cmd, batches):
        self.calls.append("torch")
        return {"times": [0.3] * len(batches)}


def test_rounds_alternate_the_sides_and_ratios_are_torch_over_jax(capsys):
    from argparse import Namespace

    from benchmarks.throughput.compare import timed_rounds

    calls = []
    benches = {"pairs": FakeBench(0.1, calls, "pairs"), "dense": FakeBench(0.2, calls, "dense")}
    args = Namespace(layouts=["pairs", "dense"], rounds=3, steps_per_round=4)
    rounds = timed_rounds(benches, FakeTorch(calls), args, num_batches=5)
    leaders = calls[::3]
    assert leaders == ["pairs", "dense", "torch"]  # each side leads in turn
    assert len(rounds.times["torch"]) == len(rounds.times["pairs"]) == 12
    np.testing.assert_allclose(rounds.ratios["pairs"], [3.0] * 3)
    np.testing.assert_allclose(rounds.ratios["dense"], [1.5] * 3)
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # a line per round


def result(layout="pairs", torch=True):
    from benchmarks.throughput.settings import SIZES

    r = {
        "size": "cpu",
        "objective": "coord",
        "layout": layout,
        "devices": 1,
        "micro_batches": 2,
        **SIZES["cpu"],
        "jax_mol_per_s": 100.0,
        "jax_compile_seconds": 3.0,
        "jax_flops_per_step": 2e9,
        "jax_achieved_gflop_per_s": 20.0,
        "jax_fraction_of_measured_matmul_rate": 0.3,
        "padded_node_fraction": 0.1,
        "padded_edge_fraction": 0.2,
        "input_pipeline_over_step_rate": 4.0,
        "jax_peak_rss_mb": 900.0,
        "jax_peak_device_mb": 500.0,
        "jax_fraction_of_peak_flops": 0.01,
    }
    if torch:
        r.update(
            torch_mol_per_s=50.0,
            ratio_jax_over_torch=2.0,
            ratio_per_round_median=2.1,
            torch_peak_rss_mb=800.0,
        )
    return r


def machine(backend="cpu"):
    return {
        "jax_backend": backend,
        "gpu": "NVIDIA H100" if backend == "gpu" else "none",
        "date": "2026-12-06",
        "cpu_model": "a CPU",
        "logical_cores": 2,
        "load_average_at_start": (1.0, 1.0, 1.0),
        "jax": "0.10.2",
        "matmul_precision": "highest",
        "measured_matmul_rate": {"flops_per_s": 7e10, "precision": "highest"},
        "peak_flops_per_s": 6.69e13,
        "peak_flops_source": "data sheet",
    }


def table_rows(md: str):
    rows = [line for line in md.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in rows]


def test_the_table_has_a_row_per_result_with_every_column():
    from benchmarks.throughput.report import markdown

    for backend in ("cpu", "gpu"):
        results = [result("pairs"), result("dense", torch=False)]
        head, rule, *rows = table_rows(markdown(results, machine(backend)))
        assert len(rows) == 2 and all(len(r) == len(head) == len(rule) for r in rows), backend
        cells = dict(zip(head, rows[0]))
        assert cells["JAX mol/s"] == "100.0" and cells["torch mol/s"] == "50.0" and cells["ratio"] == "2.00"
        assert cells["JAX micro-batches"] == "2 × 16"
        assert dict(zip(head, rows[1]))["torch mol/s"] == "nan"  # no torch side
        assert ("% of peak FLOP/s" in head) == (backend == "gpu")


# ------------------------------------------------------------------- benchmarks/sdf_scale.py


def test_sdf_scale_writes_converts_and_pretrains_on_a_small_file(tmp_path, qm9_small, cache_dir):
    """The SDF-at-scale benchmark end to end on 200 records (built from the session's 400 QM9
    molecules) and a 2-step tiny pretraining (the one benchmark smoke test that trains): every
    step ran, and the results hold their numbers."""
    import json

    out = tmp_path / "result"
    env = dict(os.environ, JAX_PLATFORMS="cpu", GEORECON_CACHE=cache_dir)
    args = [
        "--records=200",
        "--qm9-limit=400",
        "--pretrain-size=tiny",
        "--pretrain-steps=2",
        "--worker-batches=2",
        f"--workdir={tmp_path / 'work'}",
        f"--out={out}",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.sdf_scale", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "result.json").read_text())
    assert (tmp_path / "result.md").read_text().strip()
    assert report["command"].startswith("python -m benchmarks.sdf_scale --records=200")
    for key in ("date", "machine", "logical_cores", "ram_gib", "cpu_model"):
        assert report["machine"][key], key
    assert report["write"]["records"] == 200 and report["write"]["bytes"] > 0
    assert report["convert_small"]["records"] == 20 and report["convert"]["records"] == 200
    for c in (report["convert_small"], report["convert"]):
        assert c["molecules"] == c["records"] and c["skipped"] == 0  # the reader accepts every record
        assert c["store_bytes"] > 14 * c["atoms"] and c["peak_rss_mb"] > 0 and c["records_per_s"] > 0
    x = report["extrapolation"]
    assert x["records"] == 3_378_606
    assert {"seconds", "store_bytes", "peak_rss_mb"} <= set(x) and x["store_bytes"]["at_target"] > 0
    w = report["workers"]
    assert w["pickled_bytes_store"] < 10_000 < w["pickled_bytes_in_ram"]
    for mode, mapped in (("store", True), ("in_ram", False)):
        for n in (1, 2):
            workers = w[f"{mode}_{n}"]["workers"]
            assert len(workers) == n and all(x["memmap"] is mapped for x in workers)
            assert all(x["memory"]["rss_mb"] > 0 for x in workers)
    p = report["pretrain"]
    assert p["steps"] == 2 and np.isfinite(p["final_train_loss"]) and p["peak_rss_mb"] > 0
    assert "--config.data.dataset=sdf" in p["command"] and "--config.num_steps=2" in p["command"]


def test_pipeline_measures_each_worker_setting_and_tabulates_it(qm9_small):
    """benchmarks/pipeline.py's parts on real molecules: the preparation rate with the thread and
    with one worker (positive, start-up apart, memory of the process tree sampled), the cores a
    host needs from the per-worker rate, and a table row per measurement."""
    from benchmarks import pipeline
    from georecon_jax.graphs.batching import GraphBatcher

    mols, splits = qm9_small
    batcher = GraphBatcher(mols, splits["train"], 16, seed=0)
    rows = []
    for w in (0, 1):
        r = pipeline.preparation_rate(batcher, w, 40)
        assert r["workers"] == w and r["molecules_per_s"] > 0 and r["startup_s"] >= 0
        assert r["total_rss_mb"] >= r["total_pss_mb"] > 0
        assert r["total_rss_mb"] >= r["total_anonymous_mb"] > 0
        r.update(objective="coord", layout="pairs", batch_size=16, step_molecules_per_s=100.0)
        r["ratio_to_step"] = r["molecules_per_s"] / 100.0
        rows.append(r)
    host = pipeline.per_host(rows, target=1000.0)
    one = host["coord/pairs/batch 16"]
    assert one["from_workers"] == 1 and one["per_worker_molecules_per_s"] == rows[1]["molecules_per_s"]
    assert one["workers_needed"] == int(np.ceil(1000.0 / rows[1]["molecules_per_s"]))
    assert one["cores_needed"] == one["workers_needed"] + 2
    machine = dict(cpu_cores=2, arch="x86_64", memory_gb=1.0, backend="cpu", devices=["cpu"])
    res = dict(date="d", command="c", precision="highest", model_size="cpu", rows=rows, host_target=host)
    md = pipeline.markdown({**res, "machine": {**machine, "load_average_at_end": (1.0, 1.0, 1.0)}})
    table = [line for line in md.splitlines() if line.startswith("| coord |")]
    assert len(table) == 2 and all(line.count("|") == 12 for line in table)
