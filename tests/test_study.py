"""The GeoRecon study (experiments/study.py): its cells are the single commands wired together, its
intervals are right, and it survives a real SIGKILL without redoing a finished cell."""

import calendar
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import ROOT
from experiments import study
from georecon_jax.studies import cells as study_cells
from georecon_jax.studies import geo
from experiments.configs import study as study_config


def _flag(cmd, name):
    hits = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--config.{name}=")]
    return hits[-1] if hits else None


def test_cells_wire_pretrainings_to_fine_tunings(tmp_path):
    """cpu preset: each pretrained arm is fine-tuned from pretraining seed pretrain_seeds[k mod P]
    of its own (or, for a fine-tuning-only ablation, its base arm's) pretraining; one vector norm
    for every cell, so one pretraining serves QM9 and MD17; scratch from nothing; every main arm
    with the same regulariser target; the compute-matched arm with the extra steps; each cell's
    config spec loads."""
    from experiments.configs import coord, coord_ladder, georecon

    c = study_config.get_config("cpu")
    cells = study.build_cells(c, str(tmp_path))
    names = [x.name for x in cells]
    assert len(names) == len(set(names))
    by_name = {x.name: x for x in cells}
    tasks = list(c.qm9_targets) + [c.md17_molecule]
    modules = {"georecon.py": georecon, "coord.py": coord, "coord_ladder.py": coord_ladder}
    for cell in cells:
        assert _flag(cell.cmd, "model.encoder.vec_norm") == c.vec_norm
        assert _flag(cell.cmd, "seed") == str(cell.seed)
        if cell.kind == "pretrain":
            file, spec = next(a for a in cell.cmd if a.startswith("--config=")).split("/")[-1].split(":", 1)
            modules[file].get_config(spec)  # the overlays exist
            assert "_md17" not in cell.name and cell.seed in c.pretrain_seeds
            assert _flag(cell.cmd, "num_steps") == str(c.pretrain_steps)
            continue
        arm = study_config.ARMS[cell.arm]
        want_norm = "pretraining" if cell.arm.endswith("_pretraining_normaliser") else "sigma"
        assert _flag(cell.cmd, "loss.denoise_normaliser") == want_norm
        budget = c.md17_finetune_steps if cell.task == c.md17_molecule else c.finetune_steps
        extra = c.compute_matched_extra_steps if arm.get("compute_matched") else 0
        assert _flag(cell.cmd, "num_steps") == str(budget + extra)
        assert _flag(cell.cmd, "early_stopping.patience") == str(c.patience)
        if not arm.get("pretrain"):
            assert cell.needs is None and _flag(cell.cmd, "pretrained") is None
            continue
        source = by_name[cell.needs]
        assert source.kind == "pretrain" and source.arm == (arm.get("reuse") or cell.arm)
        assert source.seed == c.pretrain_seeds[cell.seed % len(c.pretrain_seeds)]
        assert _flag(cell.cmd, "pretrained") == os.path.abspath(os.path.join(tmp_path, cell.needs))
    for arm in c.arms:
        done = {x.task for x in cells if x.kind == "finetune" and x.arm == arm}
        every = arm in study_config.EVERY_TASK_ARMS
        assert done == (set(tasks) if every else set(c.ablation_tasks)), arm
        seeds = {x.seed for x in cells if x.arm == arm and x.kind == "finetune"}
        assert seeds == set(c.seeds if arm in study_config.MAIN_ARMS else c.ablation_seeds)
    # without one norm for every cell (paper), the MD17 arms pretrain torchmd-net's ET-MD17 encoder
    paper = study.build_cells(study_config.get_config("paper"), str(tmp_path))
    md17 = [x for x in paper if x.kind == "pretrain" and "_md17/" in x.name]
    assert md17 and all(x.cmd[3].endswith(".py:md17") for x in md17)
    assert all(_flag(x.cmd, "model.encoder.vec_norm") is None for x in md17)
    # gpu: every QM9 training label and the whole test split, whatever the quick config's own
    gpu = study.build_cells(study_config.get_config("gpu"), str(tmp_path))
    homo = next(x for x in gpu if x.task == "homo")
    assert _flag(homo.cmd, "data.num_train_labels") == "110000"
    assert _flag(homo.cmd, "data.num_test_molecules") == "0"
    assert not [x for x in gpu if x.arm.startswith("recipe_")]  # the recipe preset's arms are its own
    # each preset's --list time comes from its machine's rates: every cell kind has one
    for preset in ("cpu", "gpu", "paper", "recipe"):
        pc = study_config.get_config(preset)
        line = geo.expected_time(pc, study.build_cells(pc, str(tmp_path)))
        assert "no measured rate" not in line and pc.rates.machine in line, line


def test_presets_load_by_path_and_an_unknown_one_is_refused():
    from absl import flags
    from ml_collections import config_flags

    for preset in study_config.PRESETS:
        argv = ["prog", f"--config={ROOT}/experiments/configs/study.py:{preset}", "--config.seeds=(3,)"]
        fv = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
        fv(argv)
        assert fv.config.preset == preset and fv.config.seeds == (3,)
    with pytest.raises(ValueError, match="'huge'.*tiny, cpu, recipe, gpu, paper"):
        study_config.get_config("huge")


def test_differences_are_t_intervals_over_pretrainings():
    """The study's paired differences: per seed the mean over the test molecules both cells have,
    then `stats.paired_interval` over the pretrainings the seeds start from."""
    from georecon_jax.studies import stats

    c = study_config.get_config("cpu")
    c.arms = ("scratch", "georecon")
    rng = np.random.default_rng(0)
    ids = np.arange(50)
    data = {"finetune": {"homo": {"scratch": {}, "georecon": {}}}}
    expected = []
    for seed in c.seeds:
        a, b = rng.exponential(1.0, 50), rng.exponential(1.0, 50)
        keep = rng.permutation(50)[:40]  # the arm's cell tested 40 of the molecules, shuffled
        data["finetune"]["homo"]["georecon"][seed] = {"ids": ids[keep], "errors": a[keep]}
        data["finetune"]["homo"]["scratch"][seed] = {"ids": ids, "errors": b}
        expected.append(float(np.mean(a[keep] - b[keep])))
    got = geo.differences(c, study.GEORECON, data)["georecon − scratch"]["homo"]
    want = stats.paired_interval(expected, c.interval, [s % 3 for s in c.seeds])
    assert got.units == want.units == 3 and got.df == 2
    for field in ("mean", "low", "high", "per_replicate"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-12)


def test_a_cell_stopped_before_its_last_step_is_not_finished(tmp_path):
    """A command stopped by SIGTERM checkpoints and exits with 0: the cell is finished only when
    its summary.json says the run reached its last step (or stopped early by its own rule)."""
    work = tmp_path / "cell"

    def fake(summary):
        code = f"import json, os; os.makedirs({str(work)!r}, exist_ok=True); json.dump({summary!r}, open({str(work / 'summary.json')!r}, 'w'))"
        return study_cells.Cell("cell", "finetune", "scratch", 0, [sys.executable, "-c", code])

    with pytest.raises(SystemExit, match="stopped at step 6 of 30"):
        study_cells.run_cell(str(tmp_path), fake({"steps": 6, "num_steps": 30, "stopped_by_hook": False}))
    assert study_cells.cell_record(str(tmp_path), fake({})) is None
    for done in ({"steps": 30, "num_steps": 30}, {"steps": 12, "num_steps": 30, "stopped_by_hook": True}):
        rec = study_cells.run_cell(str(tmp_path), fake(done))
        assert study_cells.cell_record(str(tmp_path), fake({})) == rec
        os.remove(work / study_cells.CELL_FILE)
    assert rec["attempts"] == 3  # every attempt's time is counted


def _alive(path: str) -> list:
    """Processes whose command line mentions ``path``."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if path in cmdline:
                out.append(int(pid))
    return out


@pytest.mark.slow
def test_study_survives_sigkill_without_redoing_a_cell(tmp_path, cache_dir):
    """Tiny study (scratch, 2 seeds of QM9 HOMO): SIGKILL the study while its second cell runs,
    after that cell's first checkpoint. Its command dies with it; the same command then finishes
    the study, resumes the interrupted cell from its checkpoint, never reruns the finished one, and
    writes the table from both seeds; the results rebuilt from the cells alone are the same."""
    work = tmp_path / "study"
    cmd = [
        sys.executable,
        "-m",
        "experiments.study",
        "--config=experiments/configs/study.py:tiny",
        "--config.arms=('scratch',)",
        "--config.seeds=(0, 1)",
        "--config.finetune_steps=8",
        f"--workdir={work}",
    ]
    env = dict(os.environ, GEORECON_CACHE=str(cache_dir))
    first = work / "finetune/homo/scratch/seed0"
    second = work / "finetune/homo/scratch/seed1"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        ckpt = second / "checkpoints"
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists() and any(p.isdigit() for p in os.listdir(ckpt)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the study ended before it could be killed: the test proves nothing"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (first / study_cells.CELL_FILE).exists() and not (second / study_cells.CELL_FILE).exists()
    record = (first / study_cells.CELL_FILE).read_text()
    deadline = time.time() + 20
    while _alive(str(second)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(str(second)), "the cell's command outlived the killed study"

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (first / study_cells.CELL_FILE).read_text() == record  # the finished cell was not rerun
    assert Path(str(first) + ".log").read_text().count("$ ") == 1
    again = json.loads((second / study_cells.CELL_FILE).read_text())
    assert again["attempts"] == 2
    assert "resuming from the checkpoint" in Path(str(second) + ".log").read_text()
    results = json.loads((work / "results.json").read_text())
    entry = results["table"]["homo"]["scratch"]
    assert entry["seeds"] == [0, 1] and np.isfinite(entry["mean"]) and entry["std"] >= 0
    for seed, value in zip(entry["seeds"], entry["values"]):
        cell = json.loads((work / f"finetune/homo/scratch/seed{seed}/results.json").read_text())
        assert value == cell["metrics"]["homo_mae"]["value"]
    assert not results["missing"] and (work / "study_bars.png").exists()
    os.remove(work / "results.json")
    # what --rebuild_only runs (in this process: no second interpreter start)
    c = study_config.get_config("tiny")
    c.arms, c.seeds, c.finetune_steps = ("scratch",), (0, 1), 8
    study.write_results(c, str(work), study.build_cells(c, str(work)), [])
    assert json.loads((work / "results.json").read_text())["table"] == results["table"]


def _fake_cell(work: Path, cell, value: float, rng):
    """The files a finished cell's command leaves (what `study.collect` reads), without running it."""
    work.mkdir(parents=True, exist_ok=True)
    if cell.kind == "pretrain":
        (work / "summary.json").write_text(json.dumps({"final_train_loss": 0.5, "steps": 4, "num_steps": 4}))
        (work / "checkpoints" / "4").mkdir(parents=True)
    else:
        ids = np.arange(30)
        errors = np.abs(rng.normal(value, 1.0, size=30))
        np.savez(work / "errors_test.npz", ids=ids, abs_error=errors)
        metrics = {"homo_mae": {"value": float(errors.mean()), "unit": "meV"}}
        (work / "results.json").write_text(json.dumps({"metrics": metrics, "num_molecules": 30}))
        rows = [{"split": "validation", "step": 2, "mae": 1.0}, {"split": "train", "step": 2, "mae": 2.0}]
        early = cell.arm != "scratch"  # the pretrained arms stop early at step 6 with their best at 2
        summary = dict(
            steps=6 if early else 8, num_steps=8, best_step=2 if early else 8, stopped_by_hook=early
        )
        (work / "summary.json").write_text(json.dumps(summary))
        (work / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    record = {"name": cell.name, "wall_seconds": 1.0}
    (work / study_cells.CELL_FILE).write_text(json.dumps(record))


def test_results_from_records_alone_with_generated_verdicts(tmp_path):
    """Finished cells' records copied to the records folder are all the study needs: with the
    workdir gone, every cell counts as finished and the tables are the same; the verdict lines
    follow the intervals (a large shift: 'better'; none: 'no difference detected')."""
    from georecon_jax.studies.cells import keep_record

    c = study_config.get_config("tiny")
    c.seeds = c.pretrain_seeds = c.ablation_seeds = (0, 1, 2, 3, 4)
    c.records = str(tmp_path / "records")
    work = tmp_path / "study"
    cells = study.build_cells(c, str(work))
    rng = np.random.default_rng(0)
    shift = {"scratch": 50.0, "georecon": 10.0, "georecon_pretraining_normaliser": 50.0}
    for cell in cells:
        _fake_cell(work / cell.name, cell, shift[cell.arm], rng)
        keep_record(str(work), cell, c.records)
    first = study.write_results(c, str(work), cells, [])
    md = (work / "results.md").read_text()
    assert "- homo: georecon − scratch:" in md and md.count("georecon is better") >= 1
    better = first["differences"]["georecon − scratch"]["homo"]
    assert better["excludes_zero"] and better["high"] < 0 and better["units"] == 5
    same = first["differences"]["georecon_pretraining_normaliser − scratch"]["homo"]
    line = next(
        x for x in md.splitlines() if x.startswith("- homo: georecon_pretraining_normaliser − scratch")
    )
    assert line.endswith("no difference detected") == (not same["excludes_zero"])
    assert same["units"] == 5 and same["over"] == "pretrainings"
    # how the runs ended: scratch at its budget with the best at the last evaluation, the others early
    assert "| homo | scratch | 5 | 0 | 5 | 8 | 8 |" in md
    assert "| homo | georecon | 5 | 5 | 0 | 2 | 8 |" in md

    import shutil

    shutil.rmtree(work)
    assert all(study_cells.cell_record(str(work), cell, c.records) for cell in cells)
    again = study.write_results(c, str(work), cells, [])
    assert again["table"] == first["table"] and not again["missing"]


def test_a_pretraining_kept_only_as_a_record_is_rerun_when_a_fine_tuning_needs_it(tmp_path):
    """On a fresh machine the records say a pretraining finished, but its checkpoint is gone: the
    fine-tuning still to run gets it back by running that pretraining again; a fine-tuning whose
    record is kept is not run."""
    from georecon_jax.studies.cells import keep_record, run_study

    work, records = tmp_path / "study", str(tmp_path / "records")

    def cell(name, kind, needs=None):
        out = work / name
        code = (
            f"import json, os; os.makedirs({str(out / 'checkpoints' / '4')!r}, exist_ok=True); "
            f"json.dump({{'steps': 4, 'num_steps': 4}}, open({str(out / 'summary.json')!r}, 'w')); "
            f"open({str(tmp_path / 'ran.txt')!r}, 'a').write({name!r} + chr(10))"
        )
        return study_cells.Cell(name, kind, "georecon", 0, [sys.executable, "-c", code], needs=needs)

    pre = cell("pretrain/georecon/seed0", "pretrain")
    done = cell("finetune/homo/georecon/seed0", "finetune", needs=pre.name)
    todo = cell("finetune/gap/georecon/seed0", "finetune", needs=pre.name)
    c = study_config.get_config("tiny")
    for x in (pre, done):
        study_cells.run_cell(str(work), x)
        keep_record(str(work), x, records)
    (tmp_path / "ran.txt").unlink()
    import shutil

    shutil.rmtree(work)  # a fresh machine: only the committed records are left
    run_study(c, str(work), [pre, done, todo], 1, records)
    assert (tmp_path / "ran.txt").read_text().split() == [pre.name, todo.name]


def test_an_interrupted_restore_is_resumed_not_taken_for_finished(tmp_path):
    """The pretraining re-run for its checkpoint is stopped half-way (SIGTERM: a checkpoint, exit 0):
    the next run of the study runs it again to its end before the fine-tuning that needs it, never
    starting that fine-tuning from the half-trained checkpoint; a cell that finished in the workdir
    before records were kept gets its record copied."""
    from georecon_jax.studies.cells import keep_record, run_study

    work, records = tmp_path / "study", str(tmp_path / "records")
    log = tmp_path / "ran.txt"

    def cell(name, kind, needs=None, stop_first=False):
        out, flag = work / name, tmp_path / (name.replace("/", "_") + ".tried")
        code = (
            "import json, os, sys; "
            f"half = {stop_first!r} and not os.path.exists({str(flag)!r}); "
            f"open({str(flag)!r}, 'w').close(); "
            "step = 2 if half else 4; "
            f"os.makedirs(os.path.join({str(out)!r}, 'checkpoints', str(step)), exist_ok=True); "
            f"json.dump({{'steps': step, 'num_steps': 4}}, open({str(out / 'summary.json')!r}, 'w')); "
            f"open({str(log)!r}, 'a').write({name!r} + (' half' if half else '') + chr(10))"
        )
        return study_cells.Cell(name, kind, "georecon", 0, [sys.executable, "-c", code], needs=needs)

    pre = cell("pretrain/georecon/seed0", "pretrain", stop_first=True)
    todo = cell("finetune/gap/georecon/seed0", "finetune", needs=pre.name)
    c = study_config.get_config("tiny")
    (tmp_path / (pre.name.replace("/", "_") + ".tried")).touch()  # its first run went to the end
    study_cells.run_cell(str(work), pre)
    keep_record(str(work), pre, records)
    (tmp_path / (pre.name.replace("/", "_") + ".tried")).unlink()
    import shutil

    shutil.rmtree(work)  # a fresh machine; the re-run for the checkpoint is then interrupted
    with pytest.raises(SystemExit, match="stopped at step 2 of 4"):
        run_study(c, str(work), [pre, todo], 1, records)
    run_study(c, str(work), [pre, todo], 1, records)
    assert log.read_text().split("\n")[1:4] == [f"{pre.name} half", pre.name, todo.name]
    # a cell finished here before records were kept: its record is copied on the next run
    other = tmp_path / "other"
    out = other / "pretrain/coord/seed0"
    code = (
        f"import json, os; os.makedirs({str(out / 'checkpoints' / '4')!r}); "
        f"json.dump({{'steps': 4, 'num_steps': 4}}, open({str(out / 'summary.json')!r}, 'w'))"
    )
    extra = study_cells.Cell("pretrain/coord/seed0", "pretrain", "coord", 0, [sys.executable, "-c", code])
    study_cells.run_cell(str(other), extra)
    run_study(c, str(other), [extra], 1, str(tmp_path / "records2"))
    assert (tmp_path / "records2" / extra.name / study_cells.CELL_FILE).exists()


def test_pretraining_flattening_criterion():
    """The fall of the validation loss over the last quarter of the steps, against FLAT."""
    curve = [(500, 1.0), (1000, 0.9), (1500, 0.85), (2000, 0.84)]
    assert geo.last_quarter_drop(curve) == pytest.approx(0.01 / 0.85)
    data = {
        "pretrain": {"coord": {0: {"curve": curve}}, "georecon": {0: {"curve": [(1500, 1.0), (2000, 0.8)]}}}
    }
    rows = {
        line.split(" | ")[0]: line
        for line in geo.pretraining_lines(data)
        if line.startswith("| coord") or line.startswith("| georecon")
    }
    assert rows["| coord"].endswith("| flattened |") and rows["| georecon"].endswith("| still falling |")


def test_a_pretraining_kept_with_its_weights_is_restored_not_rerun(tmp_path):
    """A finished pretraining's record keeps the weights a fine-tuning reads (not the optimizer
    state): on a fresh machine they are written back as a checkpoint, the pretraining is not run
    again, and a fine-tuning reads exactly the variables the original checkpoint gave."""
    import shutil

    from georecon_jax.studies.cells import WEIGHTS_FILE, keep_record, run_study
    from georecon_jax.training.checkpoint import Checkpointer
    from georecon_jax.training.transfer import read_pretrained

    work, records = tmp_path / "study", str(tmp_path / "records")
    ran = tmp_path / "ran.txt"
    rng = np.random.default_rng(0)
    params = {
        "encoder": {"w": rng.normal(size=(3, 4)).astype(np.float32)},
        "head": {"b": np.ones(2, np.float32)},
    }
    ema = jax.tree_util.tree_map(lambda x: x * np.float32(0.5), params)

    pre_dir = work / "pretrain/georecon/seed0"
    code = f"open({str(ran)!r}, 'a').write('pretrain' + chr(10))"  # runs only if not restored
    pre = study_cells.Cell("pretrain/georecon/seed0", "pretrain", "georecon", 0, [sys.executable, "-c", code])
    ckpt = Checkpointer(str(pre_dir))
    ckpt.save(
        7, {"params": {"params": params}, "ema_params": {"params": ema}, "opt_state": {"mu": np.zeros(5)}}
    )
    ckpt.close()
    (pre_dir / "summary.json").write_text(json.dumps({"steps": 7, "num_steps": 7}))
    (pre_dir / "noise_normaliser.json").write_text("{}")
    (pre_dir / study_cells.CELL_FILE).write_text(json.dumps({"name": pre.name, "wall_seconds": 1.0}))
    original = read_pretrained(str(pre_dir))
    keep_record(str(work), pre, records)
    kept = np.load(os.path.join(records, pre.name, WEIGHTS_FILE))
    assert "opt_state/mu" not in kept.files and int(kept["__step__"]) == 7

    out, fin = tmp_path / "read.npy", work / "finetune/homo/georecon/seed0"
    read = (
        "import json, os, numpy as np; from georecon_jax.training.transfer import read_pretrained; "
        f"v = read_pretrained({str(pre_dir)!r}).variables['params']; "
        f"np.save({str(out)!r}, np.concatenate([v['encoder']['w'].ravel(), v['head']['b']])); "
        f"os.makedirs({str(fin)!r}, exist_ok=True); "
        f"json.dump({{'steps': 4, 'num_steps': 4}}, open({str(fin / 'summary.json')!r}, 'w'))"
    )
    todo = study_cells.Cell(
        fin.relative_to(work).as_posix(),
        "finetune",
        "georecon",
        0,
        [sys.executable, "-c", read],
        needs=pre.name,
    )
    shutil.rmtree(work)  # a fresh machine: only the records are left
    run_study(study_config.get_config("tiny"), str(work), [pre, todo], 1, records)
    assert not ran.exists()  # restored, not run again
    want = original.variables["params"]
    assert original.ema and np.array_equal(
        np.load(out), np.concatenate([want["encoder"]["w"].ravel(), want["head"]["b"]])
    )
    assert (work / pre.name / "noise_normaliser.json").exists()
    # a restore interrupted after its checkpoint was written is done again over it, not refused
    os.remove(work / pre.name / study_cells.CELL_FILE)
    assert study_cells.restore_from_record(str(work), pre, records)
    assert read_pretrained(str(work / pre.name)).step == 7


def test_recipe_arms_change_one_factor_each(tmp_path):
    """recipe preset: every arm's command is the current recipe's (scratch's) of the same seed plus
    its own flags, last (so they win), which change the fields they name in the loaded config; the
    long arms only add steps; both long arms are compared with each other; the report's method
    table names each arm's change."""
    from absl import flags
    from ml_collections import config_flags

    c = study_config.get_config("recipe")
    cells = [x for x in study.build_cells(c, str(tmp_path)) if x.kind == "finetune"]
    assert not [x for x in study.build_cells(c, str(tmp_path)) if x.kind == "pretrain"]
    base = {x.seed: x.cmd for x in cells if x.arm == "scratch"}

    def loaded(cmd):
        argv = ["prog", *(a for a in cmd if a.startswith("--config"))]
        argv[1] = argv[1].replace("experiments/", f"{ROOT}/experiments/", 1)
        fv = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
        fv(argv)
        return fv.config

    scratch = loaded(base[0])
    assert scratch.model.encoder.vec_norm == "whitened" and scratch.num_steps == 1500
    for cell in cells:
        spec = study_config.ARMS[cell.arm]
        own = list(spec.get("finetune", ()))
        body = [a for a in cell.cmd if not a.startswith(("--workdir=", "--config.num_steps="))]
        want = [a for a in base[cell.seed] if not a.startswith(("--workdir=", "--config.num_steps="))]
        assert body == want + own, cell.name
        assert _flag(cell.cmd, "num_steps") == str(c.finetune_steps + spec.get("extra_steps", 0))
        if cell.seed == 0 and own:
            got = loaded(cell.cmd)
            for flag in own:
                field, value = flag.removeprefix("--config.").split("=", 1)
                node_s, node_g = scratch, got
                *parents, leaf = field.split(".")
                for p in parents:
                    node_s, node_g = node_s[p], node_g[p]
                assert str(node_g[leaf]) == value and node_g[leaf] != node_s[leaf], flag
    pairs = geo.comparisons(c, study.GEORECON)
    assert ("recipe_long_vec_norm_none", "recipe_long") in pairs
    assert ("recipe_long_head_zero_init", "recipe_long_vec_norm_none") in pairs
    assert ("recipe_long_head_zero_init", "recipe_long") in pairs
    assert all((a, "scratch") in pairs for a in c.arms if a != "scratch")
    table = "\n".join(geo.method_lines(c, study.GEORECON))
    assert "`model.encoder.vec_norm=none`" in table and "3000 more steps" in table


def test_busy_time_counts_cells_side_by_side_once():
    """The report's elapsed time: the union of the cells' run intervals, each attempt of a resumed
    cell where it ran."""
    from georecon_jax.studies import report

    t10 = calendar.timegm(time.strptime("2026-12-07 10:00:00 UTC", "%Y-%m-%d %H:%M:%S UTC"))
    recs = [
        {"finished": "2026-12-07 10:10:00 UTC", "wall_seconds": 600.0},  # 10:00-10:10
        {"finished": "2026-12-07 10:12:00 UTC", "wall_seconds": 420.0},  # 10:05-10:12, overlaps
        {"finished": "2026-12-07 12:00:00 UTC", "wall_seconds": 60.0},  # alone, hours later
        {"wall_seconds": 99.0},  # an old record without a finishing time: left out, counted
        # resumed: 5 min in an earlier session, then 10:12-10:17 (after the first two, not over them)
        {
            "spans": [[t10 - 86400, t10 - 86100], [t10 + 720, t10 + 1020]],
            "finished": "2026-12-07 10:17:00 UTC",
            "wall_seconds": 600.0,
        },
    ]
    assert report.busy_seconds(recs) == (12 * 60 + 60 + 300 + 300, 1)


def test_the_report_links_only_figures_it_drew(tmp_path):
    """A study without pretraining draws no pretraining curve: results.md must not link one."""
    from georecon_jax.studies import report

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "drawn.png").write_bytes(b"\x89PNG")
    out.mkdir()
    (out / "not_drawn.png").write_bytes(b"\x89PNG")  # an earlier report's
    report.write(str(work), ["# t"], {"a": 1}, ["drawn.png", "not_drawn.png"], [str(out)])
    md = (out / "results.md").read_text()
    assert "![drawn.png](drawn.png)" in md and "not_drawn.png" not in md
    assert (out / "drawn.png").exists() and not (out / "not_drawn.png").exists()
    assert json.loads((out / "results.json").read_text()) == {"a": 1}


def test_command_drift_ignores_paths_and_names_changed_flags():
    cell = study_cells.Cell(
        name="finetune/homo/scratch/seed0",
        kind="finetune",
        arm="scratch",
        seed=0,
        cmd=[
            "python",
            "-m",
            "experiments.finetune",
            "--config=x.py:quick",
            "--config.num_steps=500",
            "--config.seed=0",
            "--workdir=/a/w",
            "--config.compilation_cache_dir=/a/c",
        ],
    )
    same = (
        "/venv/python -m experiments.finetune --config=x.py:quick --config.num_steps=500 "
        "--config.seed=0 --workdir=/elsewhere --config.compilation_cache_dir=/b/c"
    )
    assert study_cells.command_drift(cell, {"command": same}) == []
    assert study_cells.command_drift(cell, {}) == []  # an old record without its command
    changed = same.replace("num_steps=500", "num_steps=150") + " --config.loss.name=l1"
    assert study_cells.command_drift(cell, {"command": changed}) == [
        "config.loss.name: l1 -> (absent)",
        "config.num_steps: 150 -> 500",
    ]
    # a value with a space in it (the record keeps the command joined by spaces)
    spaced = study_cells.Cell(**{**cell.__dict__, "cmd": cell.cmd + ["--config.arms=('a', 'b')"]})
    assert study_cells.command_drift(spaced, {"command": " ".join(spaced.cmd)}) == []
    # a repeated flag: the last value wins, as absl's
    first9 = same.replace("num_steps=500", "num_steps=9") + " --config.num_steps=500"
    assert study_cells.command_drift(cell, {"command": first9}) == []
    assert study_cells.command_drift(cell, {"command": same + " --config.num_steps=9"}) == [
        "config.num_steps: 9 -> 500"
    ]
    # "--flag value" as well as "--flag=value"
    assert study_cells.command_drift(cell, {"command": same.replace("num_steps=500", "num_steps 7")}) == [
        "config.num_steps: 7 -> 500"
    ]
    other = same.replace("experiments.finetune", "experiments.pretrain")
    assert study_cells.command_drift(cell, {"command": other}) == [
        "module: experiments.pretrain -> experiments.finetune"
    ]
    # the pretraining a fine-tuning starts from is compared relative to the study's workdir: another
    # machine's study root is no change, another pretraining seed is
    name = "finetune/homo/georecon/seed0"
    ft = study_cells.Cell(
        name=name,
        kind="finetune",
        arm="georecon",
        seed=0,
        cmd=[
            "python",
            "-m",
            "experiments.finetune",
            "--config.seed=0",
            "--config.pretrained=/a/study/pretrain/georecon/seed0",
            f"--workdir=/a/study/{name}",
        ],
    )
    moved = (
        "python -m experiments.finetune --config.seed=0 "
        f"--config.pretrained=/b/s/pretrain/georecon/seed0 --workdir=/b/s/{name}"
    )
    assert study_cells.command_drift(ft, {"command": moved}) == []
    assert study_cells.command_drift(
        ft, {"command": moved.replace("georecon/seed0 ", "georecon/seed2 ")}
    ) == ["config.pretrained: <study>/pretrain/georecon/seed2 -> <study>/pretrain/georecon/seed0"]
    # the README's relative --workdir: the runner made the pretraining path absolute in its folder
    rel = dataclasses.replace(
        ft,
        cmd=[
            *ft.cmd[:4],
            "--config.pretrained=/clone/runs/s/pretrain/georecon/seed0",
            f"--workdir=runs/s/{name}",
        ],
    )
    assert study_cells.command_drift(rel, {"command": moved}) == []
    assert study_cells.command_drift(
        rel, {"command": moved.replace("georecon/seed0 ", "georecon/seed1 ")}
    ) == ["config.pretrained: <study>/pretrain/georecon/seed1 -> <study>/pretrain/georecon/seed0"]


def test_records_made_by_another_command_stop_the_study_and_are_reported(tmp_path):
    """A config changed after its cells ran: running refuses with one line naming a cell and the
    flag, --list marks the cell, --keep_changed_records runs on, and the report warns."""
    from georecon_jax.studies.cells import keep_record

    c = study_config.get_config("tiny")
    c.records = str(tmp_path / "records")
    work = tmp_path / "study"
    cells = study.build_cells(c, str(work))
    rng = np.random.default_rng(0)
    for cell in cells:
        _fake_cell(work / cell.name, cell, 10.0, rng)
        rec = json.loads((work / cell.name / study_cells.CELL_FILE).read_text())
        cmd = list(cell.cmd)
        if cell.name == "finetune/homo/scratch/seed0":
            cmd = [a.replace("--config.num_steps=4", "--config.num_steps=3") for a in cmd]
        rec["command"] = " ".join(cmd)
        (work / cell.name / study_cells.CELL_FILE).write_text(json.dumps(rec))
        keep_record(str(work), cell, c.records)
    drifted = study_cells.drifted_cells(str(work), cells, c.records)
    assert drifted == [("finetune/homo/scratch/seed0", ["config.num_steps: 3 -> 4"])]
    base = [
        sys.executable,
        "-m",
        "experiments.study",
        "--config=experiments/configs/study.py:tiny",
        f"--config.records={c.records}",
        f"--workdir={work}",
    ]
    r = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "finetune/homo/scratch/seed0: config.num_steps: 3 -> 4" in err[0]
    r = subprocess.run(base + ["--list"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "changed   finetune/homo/scratch/seed0" in r.stdout
    r = subprocess.run(
        base + ["--keep_changed_records"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    md = (work / "results.md").read_text()
    assert "Warning: 1 finished cells were made by a different command" in md
    assert "- finetune/homo/scratch/seed0: config.num_steps: 3 -> 4" in md
    # an interrupted cell whose checkpoint another command left would resume it: named too
    cell = next(x for x in cells if x.name == "finetune/homo/georecon/seed0")
    for where in (work / cell.name, Path(c.records) / cell.name):
        (where / study_cells.CELL_FILE).unlink()
    log = "\n$ " + " ".join(cell.cmd).replace("num_steps=4", "num_steps=2") + "\n"
    (work / (cell.name + ".log")).write_text(log)
    assert ("finetune/homo/georecon/seed0", ["(interrupted)", "config.num_steps: 2 -> 4"]) in (
        study_cells.drifted_cells(str(work), cells, c.records)
    )


def test_arm_colours_are_distinct_past_the_default_cycle():
    """An 11-arm study drew scratch and its 11th arm in one blue: the first 18 arms get 18 colours."""
    from matplotlib.colors import to_hex

    from georecon_jax import plots

    assert len({to_hex(plots.color(i)) for i in range(18)}) == 18
