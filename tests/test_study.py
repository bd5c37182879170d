"""The GeoRecon study (experiments/study.py): its cells are the single commands wired together, its
intervals are right, and it survives a real SIGKILL without redoing a finished cell."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from experiments import study
from experiments.configs import study as study_config


def _flag(cmd, name):
    hits = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--config.{name}=")]
    return hits[-1] if hits else None


def test_cells_wire_pretrainings_to_fine_tunings(tmp_path):
    """cpu preset: every pretrained arm is fine-tuned from its own pretraining of the same seed, the
    MD17 task from the MD17-encoder pretraining (no vector norm), scratch from nothing; the main arms
    on every task, the ablations on the preset's ablation tasks; each cell's config spec loads."""
    from experiments.configs import coord, georecon

    c = study_config.get_config("cpu")
    cells = study.build_cells(c, str(tmp_path))
    names = [x.name for x in cells]
    assert len(names) == len(set(names))
    by_name = {x.name: x for x in cells}
    tasks = list(c.qm9_targets) + [c.md17_molecule]
    for cell in cells:
        if cell.kind == "pretrain":
            spec = next(a for a in cell.cmd if a.startswith("--config=")).split(":", 1)[1]
            module = georecon if "georecon.py" in cell.cmd[3] else coord
            module.get_config(spec)  # the overlays exist
            assert _flag(cell.cmd, "seed") == str(cell.seed)
            assert (_flag(cell.cmd, "model.encoder.vec_norm") == "none") == ("_md17/" in cell.name)
            continue
        assert _flag(cell.cmd, "seed") == str(cell.seed)
        if cell.arm == "scratch":
            assert cell.needs is None and _flag(cell.cmd, "pretrained") is None
            continue
        source = by_name[cell.needs]
        assert source.kind == "pretrain" and source.arm == cell.arm and source.seed == cell.seed
        assert ("_md17/" in source.name) == (cell.task == c.md17_molecule)
        assert _flag(cell.cmd, "pretrained") == os.path.abspath(os.path.join(tmp_path, cell.needs))
    for arm in c.arms:
        done = {x.task for x in cells if x.kind == "finetune" and x.arm == arm}
        want = set(tasks) if arm in study_config.MAIN_ARMS else set(c.ablation_tasks)
        assert done == want, arm
        assert {x.seed for x in cells if x.arm == arm} == set(c.seeds)
    # at paper scale the MD17 arms pretrain torchmd-net's ET-MD17 encoder (georecon.py:md17)
    paper = study.build_cells(study_config.get_config("paper"), str(tmp_path))
    md17 = [x for x in paper if x.kind == "pretrain" and "_md17/" in x.name]
    assert md17 and all(x.cmd[3].endswith(".py:md17") for x in md17)
    assert all(_flag(x.cmd, "model.encoder.vec_norm") is None for x in md17)
    # the presets differ in sizes and step counts, not in what is compared
    for preset in ("gpu", "paper"):
        other = study_config.get_config(preset)
        assert other.arms == c.arms and other.seeds == c.seeds and other.qm9_targets == c.qm9_targets


def test_presets_load_by_path_and_an_unknown_one_is_refused():
    from absl import flags
    from ml_collections import config_flags

    for preset in study_config.PRESETS:
        argv = ["prog", f"--config={ROOT}/experiments/configs/study.py:{preset}", "--config.seeds=(3,)"]
        fv = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
        fv(argv)
        assert fv.config.preset == preset and fv.config.seeds == (3,)
    with pytest.raises(ValueError, match="'huge'.*tiny, cpu, gpu, paper"):
        study_config.get_config("huge")


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    base = [rng.exponential(1.0, 500) for _ in range(3)]
    # an arm exactly 0.2 better on every molecule of every seed: no uncertainty at all
    mean, lo, hi = study.paired_bootstrap([b - 0.2 for b in base], base, 300, 0.95)
    assert mean == pytest.approx(-0.2) and lo == pytest.approx(-0.2) and hi == pytest.approx(-0.2)
    # independent noise of the same size: the interval holds 0; a true shift of 0.3 is found
    noisy = [b + rng.normal(0, 0.5, b.shape) for b in base]
    mean, lo, hi = study.paired_bootstrap(noisy, base, 1000, 0.95)
    assert lo < 0 < hi and hi - lo < 0.2
    mean, lo, hi = study.paired_bootstrap([n + 0.3 for n in noisy], base, 1000, 0.95)
    assert 0.1 < lo < 0.3 < hi < 0.5
    # the seeds' spread widens the interval: one seed far off
    shifted = [noisy[0] + 1.0, noisy[1], noisy[2]]
    _, lo2, hi2 = study.paired_bootstrap(shifted, base, 1000, 0.95)
    assert hi2 - lo2 > 3 * (hi - lo)


def test_a_cell_stopped_before_its_last_step_is_not_finished(tmp_path):
    """A command stopped by SIGTERM checkpoints and exits with 0: the cell is finished only when
    its summary.json says the run reached its last step (or stopped early by its own rule)."""
    work = tmp_path / "cell"

    def fake(summary):
        code = f"import json, os; os.makedirs({str(work)!r}, exist_ok=True); json.dump({summary!r}, open({str(work / 'summary.json')!r}, 'w'))"
        return study.Cell("cell", "finetune", "scratch", 0, [sys.executable, "-c", code])

    with pytest.raises(SystemExit, match="stopped at step 6 of 30"):
        study.run_cell(str(tmp_path), fake({"steps": 6, "num_steps": 30, "stopped_by_hook": False}))
    assert study.cell_record(str(tmp_path), fake({})) is None
    for done in ({"steps": 30, "num_steps": 30}, {"steps": 12, "num_steps": 30, "stopped_by_hook": True}):
        rec = study.run_cell(str(tmp_path), fake(done))
        assert study.cell_record(str(tmp_path), fake({})) == rec
        os.remove(work / study.CELL_FILE)
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
    assert (first / study.CELL_FILE).exists() and not (second / study.CELL_FILE).exists()
    record = (first / study.CELL_FILE).read_text()
    deadline = time.time() + 20
    while _alive(str(second)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(str(second)), "the cell's command outlived the killed study"

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (first / study.CELL_FILE).read_text() == record  # the finished cell was not rerun
    assert Path(str(first) + ".log").read_text().count("$ ") == 1
    again = json.loads((second / study.CELL_FILE).read_text())
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
    c.arms, c.finetune_steps = ("scratch",), 8
    study.write_results(c, str(work), study.build_cells(c, str(work)), [])
    assert json.loads((work / "results.json").read_text())["table"] == results["table"]
