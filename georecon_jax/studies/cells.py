"""The one cell runner of the studies (georecon_jax/studies/geo.py, mrl.py, zvariants.py): a cell
is one command of this codebase in its own workdir, finished when it holds ``study_cell.json``;
`run_study` runs the unfinished ones (pretrainings first), resuming interrupted ones, and stops
them on SIGTERM; `run_cell` runs one.

With a records folder (the study config's ``records``, e.g. ``results/<study>/cells``), each
finished cell's small files (`RECORD_FILES`: its record, results, per-molecule errors, summary,
metrics; no checkpoints) are copied there as it finishes, so they can be committed while the study
runs; a pretraining's record also keeps its transferable weights (`WEIGHTS_FILE`: the parameters
a fine-tuning reads, about 1 MB at the quick size, without the optimizer state). A cell whose
record is in that folder counts as finished, and its results are read from there: a study that
spans sessions on fresh machines loses no finished cell. A pretraining whose checkpoint a remaining
fine-tuning needs, but which exists only as a record, is restored from its kept weights (a
checkpoint of them is written into its workdir); a record without weights is run again (same
command and seed).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from typing import Callable, List, Optional, Tuple

CELL_FILE = "study_cell.json"
# the small files of a finished cell that the records folder keeps (the cell's folder and splits/*)
RECORD_FILES = (
    CELL_FILE,
    "results.json",
    "results.md",
    "summary.json",
    "metrics.jsonl",
    "config.json",
    "errors_test.npz",
    "predictions_test.npz",
    "noise_normaliser.json",
)
# a finished pretraining's weights, as read by a fine-tuning (the EMA copy when kept), float32
WEIGHTS_FILE = "weights.npz"
_STEP_KEY = "__step__"
RUNNING: set = set()  # the cells' commands running now (Popen)


@dataclasses.dataclass
class Cell:
    name: str  # path under the study workdir
    kind: str  # pretrain | finetune
    arm: str
    seed: int
    cmd: List[str]
    task: str = ""  # finetune: a QM9 target or the MD17 molecule
    needs: Optional[str] = None  # the pretraining cell a fine-tuning starts from
    # work dir -> did the cell's command end its run? (None: its summary.json reached the last step)
    finished: Optional[Callable[[str], bool]] = None


def cell_dir(workdir: str, cell: Cell, records: str = "") -> str:
    """Where a finished cell's files are: its workdir, else its folder in ``records``."""
    work = os.path.join(workdir, cell.name)
    if records and not os.path.exists(os.path.join(work, CELL_FILE)):
        kept = os.path.join(records, cell.name)
        if os.path.exists(os.path.join(kept, CELL_FILE)):
            return kept
    return work


def cell_record(workdir: str, cell: Cell, records: str = "") -> Optional[dict]:
    """The record of a finished cell (its ``study_cell.json``), None while it is not finished."""
    try:
        with open(os.path.join(cell_dir(workdir, cell, records), CELL_FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


# flags whose values are paths of this machine or this workdir: they differ between machines and
# clones without changing what a cell computes
_MACHINE_FLAGS = ("--workdir", "--config.compilation_cache_dir")
# paths that name another cell (the pretraining a fine-tuning starts from): compared relative to the
# study's workdir, so that a change of pretraining is a change
_CELL_PATH_FLAGS = ("--config.pretrained", "--config.init_from")


def _flags(cmd: List[str], name: str) -> dict:
    """{flag: value} of a command's ``--name=value`` (or ``--name value``) arguments, the machine's
    paths left out and paths under the study's workdir (``--workdir`` less the cell's ``name``)
    written relative to it; the last value of a repeated flag wins, as absl's does."""
    raw, i = {}, 0
    while i < len(cmd):
        if cmd[i].startswith("--"):
            k, eq, v = cmd[i].partition("=")
            if not eq and i + 1 < len(cmd) and not cmd[i + 1].startswith("-"):
                i, v = i + 1, cmd[i + 1]
            raw[k] = v
        i += 1
    work = os.path.normpath(raw.get("--workdir") or ".")
    root = work[: -len(name)].rstrip("/") if name and work.endswith("/" + name) else ""
    out = {}
    for k, v in raw.items():
        if k in _MACHINE_FLAGS:
            continue
        if k in _CELL_PATH_FLAGS and root:
            v = _under_root(os.path.normpath(v), root)
        out[k] = v
    return out


def _under_root(path: str, root: str) -> str:
    """``<study>/rest`` for a path under the study root, else the path. A relative root (the
    README's ``--workdir=runs/x``) also matches the absolute path the runner made of it in
    whatever folder it ran (``/clone/runs/x/...``)."""
    if path.startswith(root + "/"):
        return "<study>/" + path[len(root) + 1 :]
    if not os.path.isabs(root) and "/" + root + "/" in path:
        return "<study>/" + path.rsplit("/" + root + "/", 1)[1]
    return path


def command_drift(cell: Cell, record: dict) -> List[str]:
    """How the command that made a finished cell's record differs from the cell's command now
    (``flag: then -> now``; paths left out): a record counts as finished by its name, so a study
    config changed after it ran would otherwise compare cells made by different commands silently.
    Empty when they agree or the record has no command."""
    then = record.get("command")
    if not then:
        return []
    # the record keeps the command joined by spaces: split both the same way (a value with a space
    # in it then differs in neither)
    then, now = then.split(), " ".join(cell.cmd).split()
    a, b = _flags(then, cell.name), _flags(now, cell.name)
    module = lambda cmd: next((cmd[i + 1] for i, x in enumerate(cmd[:-1]) if x == "-m"), None)  # noqa: E731
    out = []
    if module(then) != module(now):
        out.append(f"module: {module(then)} -> {module(now)}")
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k.removeprefix('--')}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}")
    return out


def _last_command(workdir: str, cell: Cell) -> Optional[str]:
    """The command an interrupted cell last ran here (its log's last ``$ ...`` line), else None."""
    try:
        with open(os.path.join(workdir, cell.name) + ".log") as f:
            runs = [line[2:].strip() for line in f if line.startswith("$ ")]
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return runs[-1] if runs else None


def drifted_cells(workdir: str, cells: List[Cell], records: str = "") -> List[Tuple[str, List[str]]]:
    """[(cell name, its `command_drift`), ...] of the finished cells whose record another command
    made, and of the interrupted ones whose checkpoint another command left (they would resume it;
    named "(interrupted) ...")."""
    out = []
    for cell in cells:
        rec = cell_record(workdir, cell, records)
        if rec:
            drift = command_drift(cell, rec)
            if drift:
                out.append((cell.name, drift))
            continue
        last = _last_command(workdir, cell)
        drift = command_drift(cell, {"command": last}) if last else []
        if drift and os.path.isdir(os.path.join(workdir, cell.name)):
            out.append((cell.name, ["(interrupted)", *drift]))
    return out


def finished_cells(workdir: str, cells: List[Cell], records: str = "") -> Tuple[list, List[str]]:
    """([(cell, its record, the folder of its files), ...] of the finished cells, [names of the
    others])."""
    done, missing = [], []
    for cell in cells:
        rec = cell_record(workdir, cell, records)
        if rec is None:
            missing.append(cell.name)
        else:
            done.append((cell, rec, cell_dir(workdir, cell, records)))
    return done, missing


def gather(workdir: str, cells: List[Cell], records: str, read: Callable) -> dict:
    """What the finished cells left, as {"pretrain": {...}, "finetune": {...}, "cells": {name:
    record}, "missing": [names of the unfinished], "drifted": [(name, `command_drift`), ...] of the
    finished cells another command made}.

    ``read(cell, record, folder of its files)`` yields (keys, value) pairs; each value is stored
    at out[cell.kind][keys[0]]...[keys[-1]].
    """
    done, missing = finished_cells(workdir, cells, records)
    out = {"finetune": {}, "pretrain": {}, "cells": {}, "missing": missing, "drifted": []}
    for cell, rec, work in done:
        out["cells"][cell.name] = rec
        drift = command_drift(cell, rec)
        if drift:
            out["drifted"].append((cell.name, drift))
        for keys, value in read(cell, rec, work):
            node = out[cell.kind]
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
    return out


def keep_record(workdir: str, cell: Cell, records: str) -> None:
    """Copies the finished cell's `RECORD_FILES` (and those of its splits/*) to ``records``."""
    src, dst = os.path.join(workdir, cell.name), os.path.join(records, cell.name)
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        if rel != "." and not rel.startswith("splits"):
            continue
        for name in files:
            if name in RECORD_FILES:
                os.makedirs(os.path.join(dst, rel), exist_ok=True)
                shutil.copy2(os.path.join(root, name), os.path.join(dst, rel, name))
    if cell.kind == "pretrain" and _has_checkpoint(src):
        try:
            keep_weights(src, os.path.join(dst, WEIGHTS_FILE))
        except Exception as e:  # the record is still kept: without weights, a later need re-runs it
            print(
                f"warning: {cell.name}: its weights were not kept ({type(e).__name__}: {str(e)[:200]}); "
                "on a machine without its checkpoint it is run again when a fine-tuning needs it",
                flush=True,
            )
    shutil.copy2(os.path.join(src, CELL_FILE), os.path.join(dst, CELL_FILE))  # last: marks it complete


def _jax_on_cpu():
    """The study process itself uses JAX only to read and write weights: on the CPU, so that it
    never takes the accelerator its cells' commands need (they start their own processes)."""
    import jax

    try:
        jax.config.update("jax_platforms", "cpu")
    except RuntimeError:  # a backend is already up in this process (tests): it is the one used
        pass


def keep_weights(work: str, path: str) -> None:
    """Writes the parameters a fine-tuning would read from the run in ``work`` to ``path`` (.npz)."""
    _jax_on_cpu()
    import numpy as np
    from flax import traverse_util

    from georecon_jax.training.transfer import read_pretrained

    pre = read_pretrained(work)
    flat = traverse_util.flatten_dict(pre.variables, sep="/")
    with open(path + ".tmp", "wb") as f:
        np.savez(f, **{_STEP_KEY: np.int64(pre.step)}, **{k: np.asarray(v) for k, v in flat.items()})
    os.replace(path + ".tmp", path)


def restore_from_record(workdir: str, cell: Cell, records: str) -> bool:
    """Makes a pretraining kept as a record with weights finished here again: its record files and a
    checkpoint of its weights (all a fine-tuning reads) in its workdir. False when it has no weights."""
    _jax_on_cpu()
    import numpy as np
    from flax import traverse_util

    from georecon_jax.training.checkpoint import Checkpointer

    src, work = os.path.join(records, cell.name), os.path.join(workdir, cell.name)
    if not os.path.exists(os.path.join(src, WEIGHTS_FILE)):
        return False
    with np.load(os.path.join(src, WEIGHTS_FILE)) as z:
        step = int(z[_STEP_KEY])
        variables = traverse_util.unflatten_dict({k: z[k] for k in z.files if k != _STEP_KEY}, sep="/")
    for root, _, files in os.walk(src):
        os.makedirs(os.path.join(work, os.path.relpath(root, src)), exist_ok=True)
        for name in files:
            if name not in (CELL_FILE, WEIGHTS_FILE):
                shutil.copy2(os.path.join(root, name), os.path.join(work, os.path.relpath(root, src), name))
    shutil.rmtree(os.path.join(work, "checkpoints"), ignore_errors=True)  # an interrupted restore's
    ckpt = Checkpointer(work)
    ckpt.save(step, {"params": variables})  # read back by read_pretrained as these variables
    ckpt.close()
    shutil.copy2(os.path.join(src, CELL_FILE), os.path.join(work, CELL_FILE))  # last: marks it finished
    return True


def _finished_here(workdir: str, cell: Cell) -> bool:
    """The cell's command finished in this workdir (not only as a kept record)."""
    return os.path.exists(os.path.join(workdir, cell.name, CELL_FILE))


def _has_checkpoint(work: str) -> bool:
    ckpt = os.path.join(work, "checkpoints")
    return os.path.isdir(ckpt) and any(p.isdigit() for p in os.listdir(ckpt))


def _die_with_parent():  # Linux: the cell's command is killed when the study dies (even by SIGKILL)
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_cell(workdir: str, cell: Cell) -> dict:
    """Runs the cell's command (resuming its checkpoint if an earlier attempt was interrupted);
    its output goes to <cell>.log. Wall time counts every attempt: a heartbeat file holds when each
    attempt started and how long it has run, so an attempt killed with the study is counted up to
    its last beat."""
    work = os.path.join(workdir, cell.name)
    os.makedirs(os.path.dirname(work), exist_ok=True)
    beat_path = work + ".attempts.json"
    try:  # [[start (unix s), seconds], ...]; a bare number: an attempt from before 2026-12-07
        attempts = [a if isinstance(a, list) else [None, a] for a in json.load(open(beat_path))]
    except (FileNotFoundError, json.JSONDecodeError):
        attempts = []
    t0 = time.time()
    attempts.append([t0, 0.0])
    with open(work + ".log", "a") as log:
        log.write(f"\n$ {' '.join(cell.cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cell.cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        RUNNING.add(proc)
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                attempts[-1][1] = time.time() - t0
                with open(beat_path + ".tmp", "w") as f:
                    json.dump(attempts, f)
                os.replace(beat_path + ".tmp", beat_path)
        except BaseException:  # Ctrl-C / SIGTERM: stop the command too (it checkpoints on SIGTERM)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            RUNNING.discard(proc)
    attempts[-1][1] = time.time() - t0
    with open(beat_path, "w") as f:
        json.dump(attempts, f)
    if proc.returncode:
        raise SystemExit(
            f"cell {cell.name} failed (exit code {proc.returncode}); its output: {work}.log\n"
            f"Running the same study command again resumes it."
        )
    if cell.finished is not None:
        reached = None if cell.finished(work) else ("?", "all")
    else:
        reached = steps_reached(work)
    if reached is not None:  # a command stopped by SIGTERM checkpoints and exits with 0
        raise SystemExit(
            f"cell {cell.name} stopped at step {reached[0]} of {reached[1]} (interrupted); "
            "running the same study command again resumes it"
        )
    record = {
        "name": cell.name,
        "kind": cell.kind,
        "arm": cell.arm,
        "task": cell.task,
        "seed": cell.seed,
        "command": " ".join(cell.cmd),
        "wall_seconds": float(sum(secs for _, secs in attempts)),
        "attempts": len(attempts),
        # when each attempt ran (unix s; those from before 2026-12-07 are not known)
        "spans": [[start, start + secs] for start, secs in attempts if start is not None],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    with open(os.path.join(work, CELL_FILE + ".tmp"), "w") as f:
        json.dump(record, f, indent=1)
    os.replace(os.path.join(work, CELL_FILE + ".tmp"), os.path.join(work, CELL_FILE))
    return record


def steps_reached(work: str) -> Optional[tuple]:
    """(step, num_steps) when the cell's summary.json says its run stopped before the end (and not
    by early stopping); None when it ran to the end."""
    try:
        s = read_json(os.path.join(work, "summary.json"))
    except (FileNotFoundError, json.JSONDecodeError):
        return (0, None)
    if s.get("steps") == s.get("num_steps") or s.get("stopped_by_hook"):
        return None
    return (s.get("steps"), s.get("num_steps"))


def run_study(c, workdir: str, cells: List[Cell], jobs: int = 1, records: str = ""):
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    if records:  # a cell that finished here before its record (or its weights) was kept
        for cell in cells:
            kept = os.path.join(records, cell.name)
            if _finished_here(workdir, cell) and (
                not os.path.exists(os.path.join(kept, CELL_FILE))
                or (
                    cell.kind == "pretrain"
                    and _has_checkpoint(os.path.join(workdir, cell.name))
                    and not os.path.exists(os.path.join(kept, WEIGHTS_FILE))
                )
            ):
                keep_record(workdir, cell, records)
    todo = [cell for cell in cells if cell_record(workdir, cell, records) is None]
    needed = {cell.needs for cell in todo if cell.needs}
    # a pretraining a remaining fine-tuning needs, finished only as a record (or finished here but
    # without its checkpoints): run again, and resumed by run_cell if that run was interrupted
    restore = [
        cell
        for cell in cells
        if cell.name in needed
        and cell not in todo
        and not (_finished_here(workdir, cell) and _has_checkpoint(os.path.join(workdir, cell.name)))
    ]
    for cell in restore:  # its old record here would make an interrupted re-run look finished
        stale = os.path.join(workdir, cell.name, CELL_FILE)
        if os.path.exists(stale):
            os.remove(stale)
    restored = [cell for cell in restore if records and restore_from_record(workdir, cell, records)]
    restore = [cell for cell in restore if cell not in restored]
    if restored:
        print(
            f"{len(restored)} finished pretraining(s) restored from the weights in their records: "
            f"{', '.join(x.name for x in restored)}",
            flush=True,
        )
    if restore:
        print(
            f"{len(restore)} finished pretraining(s) kept only as records (without weights) are run "
            f"again for the checkpoints that remaining fine-tunings need: "
            f"{', '.join(x.name for x in restore)}",
            flush=True,
        )
    print(
        f"study {c.preset}: {len(cells)} cells ({len(cells) - len(todo)} finished, "
        f"{len(todo)} to run, {jobs} at a time) in {workdir}",
        flush=True,
    )
    bar = tqdm(total=len(cells) + len(restore), initial=len(cells) - len(todo), desc="study", unit="cell")

    def one(cell):
        needs = Cell(cell.needs, "", "", 0, []) if cell.needs else None
        if needs and not (
            _finished_here(workdir, needs) and _has_checkpoint(os.path.join(workdir, needs.name))
        ):
            raise SystemExit(f"cell {cell.name} needs {cell.needs}, which has not finished here")
        r = run_cell(workdir, cell)
        if records:
            keep_record(workdir, cell, records)
        bar.update(1)
        tqdm.write(f"{cell.name}: done in {r['wall_seconds']:.0f} s")

    for kind in ("pretrain", "finetune"):  # fine-tunings start from finished pretrainings
        batch = [cell for cell in [*restore, *todo] if cell.kind == kind]
        if jobs <= 1:
            for cell in batch:
                one(cell)
            continue
        pool = ThreadPoolExecutor(jobs)
        try:
            for f in [pool.submit(one, cell) for cell in batch]:
                f.result()
        except BaseException:  # stopped, or a cell failed: start nothing more, stop what runs
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(RUNNING):
                proc.send_signal(signal.SIGTERM)  # it checkpoints and exits
            for proc in list(RUNNING):
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            raise
        pool.shutdown()
    bar.close()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path) -> List[dict]:
    """The rows of a JSON-lines file (metrics.jsonl)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
