"""The SDF path at scale: a synthetic SDF of N records, converted into the memory-mapped
molecule store, then pretrained on.

  python -m benchmarks.sdf_scale                      # 1,000,000 records (the committed run)
  python -m benchmarks.sdf_scale --records 20000      # a check of the whole path in minutes

Steps, each in its own process (so that each peak RSS is that step's alone):
  1. write: an SDF of ``--records`` records built from QM9 molecules (qm9pack, through the QM9
     cache), each a QM9 molecule with Gaussian noise (``--sigma`` Å) on its coordinates; V2000
     blocks with the molecule's bonds (from its geometry, RDKit's DetermineConnectivity, written
     once per QM9 molecule), so that the reader accepts every record (it refuses implicit hydrogens);
  2. convert: `data.sdf.load_sdf` of the first tenth of the file, then of the whole file (two sizes:
     the growth of time, store size and peak RSS, extrapolated linearly to PCQM4Mv2's 3.4 M
     records at QM9's molecule size);
  3. workers: 1 and 2 worker processes (spawned) receive the store-backed molecules (pickled as the
     store's folder), read every array and make batches; their RSS, PSS (shared pages divided
     among the processes mapping them) and anonymous (private) memory, next to the same with an
     in-RAM copy of the molecules;
  4. pretrain: ``python -m experiments.pretrain --config=experiments/configs/coord.py:quick
     --config.data.dataset=sdf --config.data.sdf_path=<file> --config.num_steps=200`` on the store
     converted in step 2 (same cache folder): steps/s and peak RSS.

Writes ``<out>.json`` (every number, the machine, the date, the commands) and ``<out>.md``.
Peak RSS: ``ru_maxrss`` of each step's process (os.wait4), and of all children together.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PCQM4MV2_RECORDS = 3_378_606  # molecules in PCQM4Mv2's training SDF (pcqm4m-v2-train.sdf)
MB = 1024 * 1024


# ----------------------------------------------------------------------------- 1. the SDF file


def _templates(mols, k: int):
    """(head, atom line tails, tail, positions) of QM9 molecule k as a V2000 block: the head is
    every line from the counts line up, each atom line keeps its text after the coordinates, the
    tail holds the bonds and ``M  END``. None if the reader would refuse the molecule."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    from georecon_jax.data.sdf import parse_record

    z, pos = mols.molecule(k)
    rw = Chem.RWMol()
    for a in z:
        rw.AddAtom(Chem.Atom(int(a)))
    conf = Chem.Conformer(len(z))
    for i, xyz in enumerate(np.asarray(pos, np.float64)):
        conf.SetAtomPosition(i, Point3D(*map(float, xyz)))
    conf.Set3D(True)
    rw.AddConformer(conf, assignId=True)
    try:
        rdDetermineBonds.DetermineConnectivity(rw)
    except Exception:  # noqa: BLE001 - a geometry RDKit cannot connect: not used as a template
        return None
    block = Chem.MolToMolBlock(rw)
    if parse_record(0, block.encode())[3] is not None:
        return None
    lines = block.split("\n")
    n = len(z)
    head = "\n".join(lines[1:4]) + "\n"  # program line, comment, counts line (the name is ours)
    atoms = [line[30:] + "\n" for line in lines[4 : 4 + n]]
    tail = "\n".join(lines[4 + n :]).rstrip("\n") + "\n$$$$\n"
    return head, atoms, tail, np.asarray(pos, np.float64)


def write_sdf(path: str, n_records: int, qm9_limit=None, sigma: float = 0.05, seed: int = 0) -> dict:
    """Writes the synthetic SDF; returns what it wrote."""
    from georecon_jax.data.qm9 import load_qm9

    t0 = time.perf_counter()
    mols, _ = load_qm9(limit=qm9_limit, verbose=False)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(mols))
    templates = {}

    def template(j: int):
        """(QM9 index, template) of order position j, or of the next molecule the reader accepts."""
        for step in range(len(order)):
            k = int(order[(j + step) % len(order)])
            if k not in templates:
                templates[k] = _templates(mols, k)
            if templates[k] is not None:
                return k, templates[k]
        raise SystemExit("no QM9 molecule makes a record the reader accepts")

    n_atoms = 0
    with open(path + ".part", "w", buffering=4 * MB) as f:
        for r in range(n_records):
            k, (head, atoms, tail, pos) = template(r % len(order))
            moved = pos + rng.normal(0.0, sigma, pos.shape)
            f.write(f"qm9_{int(mols.ids[k])}_copy{r}\n")
            f.write(head)
            f.write("".join(f"{x:10.4f}{y:10.4f}{z:10.4f}{a}" for (x, y, z), a in zip(moved.tolist(), atoms)))
            f.write(tail)
            n_atoms += len(atoms)
    os.replace(path + ".part", path)
    return {
        "records": n_records,
        "atoms": n_atoms,
        "qm9_molecules_available": len(mols),
        "qm9_molecules_used": sum(t is not None for t in templates.values()),
        "qm9_molecules_refused": sum(t is None for t in templates.values()),
        "sigma_angstrom": sigma,
        "bytes": os.path.getsize(path),
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------- 2. conversion


def convert(sdf: str, cache: str, limit=None, validation_fraction: float = 0.05, chunk_size=None) -> dict:
    from georecon_jax.data import sdf as sdf_data
    from georecon_jax.data.store import DEFAULT_CHUNK, open_store, store_size_bytes

    t0 = time.perf_counter()
    mols, splits = sdf_data.load_sdf(
        sdf,
        cache_dir=cache,
        limit=limit,
        validation_fraction=validation_fraction,
        verbose=True,
        chunk_size=chunk_size or DEFAULT_CHUNK,
    )
    seconds = time.perf_counter() - t0
    store = sdf_data._cache_path(cache, sdf, limit, 0, validation_fraction)
    meta = open_store(store)[2]
    return {
        "limit": limit,
        "records": meta["records"],
        "molecules": meta["n_molecules"],
        "atoms": meta["n_atoms"],
        "skipped": meta["skipped"],
        "seconds": seconds,
        "records_per_s": meta["records"] / seconds,
        "chunk_size": chunk_size or DEFAULT_CHUNK,
        "store": store,
        "store_bytes": store_size_bytes(store),
        "sdf_bytes": os.path.getsize(sdf),
    }


# ---------------------------------------------------------------------------------- 3. workers


def _memory() -> dict:
    """This process's Rss, Pss, Anonymous (MB) from /proc/self/smaps_rollup."""
    out = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Anonymous", "Shared_Clean", "Private_Clean"):
                    out[key.lower() + "_mb"] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


def _worker(mols, train, barrier, queue, batches: int):
    """A worker: reads every array of ``mols`` (all its pages), makes ``batches`` batches, and
    reports its memory while every worker is alive (``barrier``)."""
    from georecon_jax.graphs.batching import GraphBatcher

    t0 = time.perf_counter()
    check = 0.0
    step = 1 << 20
    for name in ("atomic_numbers", "positions", "offsets", "ids"):
        a = getattr(mols, name)
        for s in range(0, len(a), step):
            check += float(np.asarray(a[s : s + step], np.float64).sum())
    batcher = GraphBatcher(mols, train, 32, shuffle=True, num_buckets=3, process_index=0, process_count=1)
    for k in range(batches):
        batcher.batch(k)
    seconds = time.perf_counter() - t0
    barrier.wait()
    queue.put({"memory": _memory(), "memmap": type(mols.positions).__name__ == "memmap", "seconds": seconds})
    barrier.wait()


def workers(store: str, batches: int = 20) -> dict:
    import multiprocessing as mp
    import pickle

    from georecon_jax.data.store import open_store

    mols, splits, _ = open_store(store)
    ctx = mp.get_context("spawn")
    train = np.asarray(splits["train"])
    out = {"pickled_bytes_store": len(pickle.dumps(mols))}
    in_ram = None
    for mode in ("store", "in_ram"):
        if mode == "in_ram":  # a plain copy in RAM: pickles its arrays
            in_ram = dataclasses.replace(
                mols,
                **{
                    k: np.array(getattr(mols, k))
                    for k in ("atomic_numbers", "positions", "offsets", "ids", "targets")
                },
            )
            out["pickled_bytes_in_ram"] = len(pickle.dumps(in_ram))
        for n in (1, 2):
            barrier, queue = ctx.Barrier(n), ctx.Queue()
            procs = [
                ctx.Process(
                    target=_worker, args=(mols if mode == "store" else in_ram, train, barrier, queue, batches)
                )
                for _ in range(n)
            ]
            for p in procs:
                p.start()
            reports = [queue.get(timeout=3600) for _ in procs]
            for p in procs:
                p.join()
            out[f"{mode}_{n}"] = {
                "workers": reports,
                "sum_rss_mb": sum(r["memory"].get("rss_mb", 0) for r in reports),
                "sum_pss_mb": sum(r["memory"].get("pss_mb", 0) for r in reports),
                "sum_anonymous_mb": sum(r["memory"].get("anonymous_mb", 0) for r in reports),
            }
    return out


# --------------------------------------------------------------------------------- the phases


def _phase(args) -> dict:
    if args.phase == "write":
        return write_sdf(args.sdf, args.records, args.qm9_limit, args.sigma, args.seed)
    if args.phase == "convert":
        return convert(args.sdf, args.cache, args.limit, args.validation_fraction, args.chunk_size)
    if args.phase == "workers":
        return workers(args.store, args.worker_batches)
    raise ValueError(args.phase)


def run_process(cmd, log_path: str, env=None) -> dict:
    """Runs ``cmd`` to the end; its exit code, wall seconds and peak RSS (os.wait4: this process
    and the children it waited for)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "command": shlex.join(cmd),
        "exit_code": proc.returncode,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "log": log_path,
    }
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(
            f"{shlex.join(cmd)} failed (exit {proc.returncode}); its log {log_path} ends:\n{tail}"
        )
    return result


def _child(phase: str, args, out_json: str, **extra) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.sdf_scale", f"--phase={phase}", f"--phase-out={out_json}"]
    for k, v in extra.items():
        if v is not None:
            cmd.append(f"--{k.replace('_', '-')}={v}")
    proc = run_process(cmd, os.path.join(args.workdir, "logs", f"{phase}{extra.get('limit') or ''}.log"))
    with open(out_json) as f:
        proc.update(json.load(f))
    return proc


def pretrain(args, sdf: str, cache: str) -> dict:
    workdir = os.path.join(args.workdir, "pretrain")
    cmd = [
        sys.executable,
        "-m",
        "experiments.pretrain",
        f"--config=experiments/configs/coord.py:{args.pretrain_size}",
        "--config.data.dataset=sdf",
        f"--config.data.sdf_path={sdf}",
        f"--config.num_steps={args.pretrain_steps}",
        f"--config.data.cache_dir={cache}",
        f"--workdir={workdir}",
        *args.pretrain_flag,
    ]
    if os.path.exists(workdir):  # a fresh run, not a resume
        import shutil

        shutil.rmtree(workdir)
    out = run_process(cmd, os.path.join(args.workdir, "logs", "pretrain.log"))
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    rows = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rates = [r["steps_per_second"] for r in rows if r["split"] == "train" and "steps_per_second" in r]
    out.update(
        steps=summary["steps"],
        final_train_loss=summary["final_train_loss"],
        wall_seconds_training=summary["wall_seconds_this_run"],
        steps_per_s_overall=summary["steps"] / summary["wall_seconds_this_run"],
        # the first logging window holds the compilation: the rate after it
        steps_per_s_after_first_window=float(np.mean(rates[1:])) if len(rates) > 1 else None,
        train_rate_windows=rates,
    )
    return out


# ------------------------------------------------------------------------------------ report


def machine() -> dict:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    cpu = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import rdkit

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.machine(),  # uname -m
        "platform": platform.platform(),
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "ram_gib": mem,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "rdkit": rdkit.__version__,
        "git_commit": commit,
        "load_average_at_start": list(os.getloadavg()),
    }


def extrapolate(small: dict, full: dict, target: int = PCQM4MV2_RECORDS) -> dict:
    """Each quantity as a + b * records through the two measured sizes, at ``target`` records.
    Peak RSS grows with the records only up to one chunk (the conversion's buffer): below the
    chunk size its line says nothing about larger files, and it is left out (None)."""
    out = {}
    n1, n2 = small["records"], full["records"]
    for key in ("seconds", "store_bytes", "peak_rss_mb", "sdf_bytes"):
        v1, v2 = small[key], full[key]
        slope = (v2 - v1) / (n2 - n1) if n2 != n1 else 0.0
        out[key] = {"per_record": slope, "at_target": v2 + slope * (target - n2)}
    rss = out["peak_rss_mb"]
    if rss["per_record"] <= 0:  # no growth measured: a falling line is noise, not a forecast
        rss.update(per_record=0.0, at_target=max(small["peak_rss_mb"], full["peak_rss_mb"]))
        out["peak_rss_note"] = (
            f"Peak RSS did not grow from {n1:,} to {n2:,} records; the larger of the two is shown."
        )
    if n1 < small["chunk_size"]:
        out["peak_rss_mb"] = None
        out["peak_rss_note"] = (
            f"RSS not extrapolated: the smaller conversion ({n1:,} records) is below the chunk size "
            f"({small['chunk_size']:,}), where RSS grows with the chunk's buffer, not with the file."
        )
    out["records"] = target
    out["records_per_s"] = target / out["seconds"]["at_target"]
    out["atoms_per_molecule_measured"] = full["atoms"] / full["molecules"]
    return out


def markdown(r: dict) -> str:
    m, w, c1, c2, x = r["machine"], r["write"], r["convert_small"], r["convert"], r["extrapolation"]
    lines = [
        f"# SDF at scale: {c2['records']:,} records",
        "",
        f"{m['date']}; {m['cpu_model']}, {m['logical_cores']} logical cores ({m['machine']}), "
        f"{m['ram_gib']:.1f} GiB RAM; load average at start {m['load_average_at_start'][0]:.1f} "
        f"(the cores may be shared with other jobs); Python {m['python']}, numpy {m['numpy']}, RDKit "
        f"{m['rdkit']}; commit {m['git_commit']}.",
        "",
        f"Command: `{r['command']}`",
        "",
        f"SDF: {w['records']:,} records of {w['qm9_molecules_used']:,} QM9 molecules with Gaussian "
        f"noise of {w['sigma_angstrom']} Å on the coordinates, bonds from the geometry; "
        f"{w['bytes'] / MB:,.0f} MiB, written in {w['seconds']:.0f} s.",
        "",
        "## Conversion into the memory-mapped store",
        "",
        "| records | molecules | atoms | seconds | records/s | store MiB | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in (c1, c2):
        lines.append(
            f"| {c['records']:,} | {c['molecules']:,} | {c['atoms']:,} | {c['seconds']:.1f} | "
            f"{c['records_per_s']:,.0f} | {c['store_bytes'] / MB:,.1f} | {c['peak_rss_mb']:,.0f} |"
        )
    lines += [
        f"| **{x['records']:,}** (extrapolated) | | | **{x['seconds']['at_target']:,.0f}** | "
        f"{x['records_per_s']:,.0f} | **{x['store_bytes']['at_target'] / MB:,.0f}** | "
        + (f"**{x['peak_rss_mb']['at_target']:,.0f}** |" if x["peak_rss_mb"] else "n/a |"),
        "",
        "Extrapolated to PCQM4Mv2's training SDF (3.4 M records) linearly through the two measured "
        "sizes (the first tenth of the file and the whole file), at QM9's molecule size "
        f"({x['atoms_per_molecule_measured']:.1f} atoms per molecule); the store's size is "
        f"{x['store_bytes']['per_record']:.0f} bytes per record here: 14 bytes per atom "
        "(float32 xyz, int16 Z) and 24 per molecule (offset, id, split index), so PCQM4Mv2's larger "
        "molecules scale it by their atom count. Peak RSS: ru_maxrss of the converting process; "
        f"chunks of {c2['chunk_size']:,} records. " + x.get("peak_rss_note", ""),
        "",
        "Target: a 1 M-record conversion within 4 GB of RSS: "
        + (
            f"{'met' if c2['peak_rss_mb'] * MB < 4e9 else 'NOT met'} ({c2['peak_rss_mb']:,.0f} MiB at "
            f"{c2['records']:,} records)."
            if c2["records"] >= 1_000_000
            else f"not measured by this run ({c2['records']:,} records)."
        ),
        "",
    ]
    wk = r.get("workers")
    if wk:
        lines += [
            "## Worker processes reading the store",
            "",
            f"Each worker reads every array and makes {r['worker_batches']} batches of 32. "
            f"Store-backed molecules pickle to {wk['pickled_bytes_store']:,} bytes; an in-RAM copy to "
            f"{wk['pickled_bytes_in_ram'] / MB:,.1f} MiB. PSS divides shared pages among the processes "
            "that map them: the sum over workers is what they cost the host together.",
            "",
            "| molecules | workers | RSS per worker MiB | PSS, sum MiB | private (anonymous), sum MiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for mode in ("store", "in_ram"):
            for n in (1, 2):
                e = wk[f"{mode}_{n}"]
                rss = ", ".join(f"{x['memory'].get('rss_mb', 0):,.0f}" for x in e["workers"])
                lines.append(
                    f"| {'memory-mapped store' if mode == 'store' else 'in-RAM copy'} | {n} | {rss} | "
                    f"{e['sum_pss_mb']:,.0f} | {e['sum_anonymous_mb']:,.0f} |"
                )
        lines.append("")
    p = r.get("pretrain")
    if p:
        after = p["steps_per_s_after_first_window"]
        lines += [
            "## Pretraining on the store",
            "",
            f"`{p['command']}`",
            "",
            f"{p['steps']} steps in {p['wall_seconds_training']:.0f} s of training loop "
            f"({p['steps_per_s_overall']:.2f} steps/s overall, compilation included"
            + (f"; {after:.2f} steps/s after the first logging window" if after else "")
            + f"); final training loss {p['final_train_loss']:.4f}; peak RSS {p['peak_rss_mb']:,.0f} MiB "
            f"(the training process); {p['seconds']:.0f} s for the whole command.",
            "",
        ]
    lines += [
        f"Peak RSS of any child process: {r['children_peak_rss_mb']:,.0f} MiB; of this driver: "
        f"{r['driver_peak_rss_mb']:,.0f} MiB. Raw numbers: the .json file beside this one.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--workdir", default=os.path.join("/tmp", "georecon_sdf_scale"), help="SDF, store, logs")
    p.add_argument(
        "--out", default=os.path.join(ROOT, "benchmarks", "results", "sdf_scale"), help="<out>.md/.json"
    )
    p.add_argument("--qm9-limit", type=int, default=None, help="QM9 molecules to build from (default all)")
    p.add_argument("--sigma", type=float, default=0.05, help="noise on the coordinates, Å")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation-fraction", type=float, default=0.05, help="as coord.py's data section")
    p.add_argument("--worker-batches", type=int, default=20)
    p.add_argument(
        "--chunk-size", type=int, default=None, help="records per chunk (default: the store's, 50,000)"
    )
    p.add_argument("--pretrain-size", default="quick")
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument("--pretrain-flag", action="append", default=[], help="more flags for experiments.pretrain")
    p.add_argument("--skip-pretrain", action="store_true")
    p.add_argument("--keep-sdf", action="store_true", help="reuse <workdir>/synthetic.sdf if it is there")
    # one step, run in a child process
    p.add_argument("--phase", choices=("write", "convert", "workers"), help=argparse.SUPPRESS)
    p.add_argument("--phase-out", help=argparse.SUPPRESS)
    p.add_argument("--sdf", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.phase:
        result = _phase(args)
        result["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(args.phase_out, "w") as f:
            json.dump(result, f, indent=1)
        return
    if args.records < 20:
        p.error(f"--records={args.records}: at least 20 (a tenth of them is converted first)")

    os.makedirs(os.path.join(args.workdir, "logs"), exist_ok=True)
    cache = os.path.join(args.workdir, "cache")
    sdf = os.path.join(args.workdir, "synthetic.sdf")
    phases = os.path.join(args.workdir, "phases")
    os.makedirs(phases, exist_ok=True)
    if os.path.exists(cache):  # an earlier run's stores: every conversion here is measured
        import shutil

        shutil.rmtree(cache)
    report = {
        "command": shlex.join(
            ["python", "-m", "benchmarks.sdf_scale", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine(),
        "worker_batches": args.worker_batches,
    }
    if args.keep_sdf and os.path.exists(sdf) and os.path.exists(os.path.join(phases, "write.json")):
        with open(os.path.join(phases, "write.json")) as f:
            report["write"] = json.load(f)
        report["write"]["reused"] = True
    else:
        report["write"] = _child(
            "write",
            args,
            os.path.join(phases, "write.json"),
            sdf=sdf,
            records=args.records,
            qm9_limit=args.qm9_limit,
            sigma=args.sigma,
            seed=args.seed,
        )
    print(
        f"wrote {sdf}: {report['write']['records']:,} records in {report['write']['seconds']:.0f} s",
        flush=True,
    )
    vf = args.validation_fraction
    small = args.records // 10
    report["convert_small"] = _child(
        "convert",
        args,
        os.path.join(phases, "convert_small.json"),
        sdf=sdf,
        cache=cache,
        limit=small,
        validation_fraction=vf,
        chunk_size=args.chunk_size,
    )
    report["convert"] = _child(
        "convert",
        args,
        os.path.join(phases, "convert.json"),
        sdf=sdf,
        cache=cache,
        validation_fraction=vf,
        chunk_size=args.chunk_size,
    )
    for c in (report["convert_small"], report["convert"]):
        print(
            f"converted {c['records']:,} records in {c['seconds']:.1f} s ({c['records_per_s']:,.0f} records/s), "
            f"store {c['store_bytes'] / MB:,.1f} MiB, peak RSS {c['peak_rss_mb']:,.0f} MiB",
            flush=True,
        )
    report["extrapolation"] = extrapolate(report["convert_small"], report["convert"])
    report["workers"] = _child(
        "workers",
        args,
        os.path.join(phases, "workers.json"),
        store=report["convert"]["store"],
        worker_batches=args.worker_batches,
    )
    if not args.skip_pretrain:
        report["pretrain"] = pretrain(args, sdf, cache)
        print(
            f"pretrained {report['pretrain']['steps']} steps: {report['pretrain']['steps_per_s_overall']:.2f} steps/s, "
            f"peak RSS {report['pretrain']['peak_rss_mb']:,.0f} MiB",
            flush=True,
        )
    report["children_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(report))
    print(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
