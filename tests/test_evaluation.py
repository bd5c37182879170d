"""georecon_jax/tasks/evaluation.py: other workdirs refused in one line; reports carry the run's label."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import md17_config
from georecon_jax.tasks import evaluation, property_data

ROOT = Path(__file__).resolve().parents[1]


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def config_json(name: str, size: str = "tiny") -> dict:
    """What the runner's `record_config` writes into config.json for ``experiments/configs/<name>.py``."""
    import importlib

    cfg = importlib.import_module(f"experiments.configs.{name}").get_config(size)
    return json.loads(cfg.to_json_best_effort())


def pretraining_workdir(tmp_path: Path, name: str = "georecon") -> Path:
    wd = tmp_path / f"pre_{name}"
    write_json(wd / "config.json", config_json(name))
    summary = {"steps": 8, "final_train_loss": 0.62, "objective": name}
    if name == "georecon":
        summary.update(reconstruction_rmsd_angstrom=2.155, num_molecules=64)
    write_json(wd / "summary.json", summary)
    (wd / "checkpoints").mkdir()
    return wd


# ---------------------------------------------------------------------------------------------
# evaluate refuses a workdir of another kind, in one line.


def refusal(workdir) -> ValueError:
    """The error `evaluate` raises for ``workdir`` (before any data is read)."""
    with pytest.raises(ValueError) as e:
        evaluation.evaluate(str(workdir), make_plots=False, verbose=False)
    assert type(e.value).__name__ == "WorkdirError", repr(e.value)
    message = str(e.value)
    assert "\n" not in message and str(workdir) in message
    return e.value


def test_evaluate_refuses_a_pretraining_workdir_naming_its_kind_and_report(tmp_path):
    wd = pretraining_workdir(tmp_path, "georecon")
    message = str(refusal(wd))
    assert "GeoRecon pretraining run" in message
    assert "fine-tuning workdir" in message
    assert str(wd / "summary.json") in message and "reconstruction RMSD 2.15" in message
    # The check sits where a workdir is read, so every reader of workdirs gets it.
    with pytest.raises(evaluation.WorkdirError):
        evaluation.load_workdir_config(str(wd))
    with pytest.raises(evaluation.WorkdirError):
        evaluation.predict_split(str(wd))


@pytest.mark.parametrize(
    "name, kind", [("coord", "Coord pretraining run"), ("mrl3d", "3DMRL pretraining run")]
)
def test_evaluate_refuses_other_pretraining_workdirs(tmp_path, name, kind):
    wd = pretraining_workdir(tmp_path, name)
    message = str(refusal(wd))
    assert kind in message and str(wd / "summary.json") in message


def test_evaluate_refuses_pair_runs_and_folders_that_are_no_workdir(tmp_path):
    pairs = tmp_path / "freesolv"
    write_json(pairs / "results.json", {"task": "freesolv"})
    (pairs / "splits" / "cv0_seed0").mkdir(parents=True)
    message = str(refusal(pairs))
    assert "pair fine-tuning run" in message and str(pairs / "results.json") in message

    split = pairs / "splits" / "cv0_seed0"
    write_json(split / "config.json", config_json("mrl_finetune"))
    assert "one split of a pair fine-tuning run" in str(refusal(split))

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a workdir" in str(refusal(empty))
    assert "no such folder" in str(refusal(tmp_path / "absent"))

    unstarted = tmp_path / "unstarted"
    write_json(unstarted / "config.json", config_json("finetune_qm9"))
    assert "target_stats.json" in str(refusal(unstarted))


def test_a_finetuning_workdir_passes_the_check(tmp_path):
    wd = tmp_path / "ft"
    write_json(wd / "config.json", config_json("finetune_md17"))
    write_json(wd / property_data.STATS_FILE, {"target": "energy"})
    assert evaluation.check_finetune_workdir(str(wd))["task"] == "md17"
    assert evaluation.load_workdir_config(str(wd)).task == "md17"


def test_evaluate_command_on_a_pretraining_workdir_exits_with_one_line(tmp_path):
    wd = pretraining_workdir(tmp_path, "georecon")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", f"--workdir={wd}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if str(wd) in l]
    assert len(lines) == 1, r.stderr
    assert "GeoRecon pretraining run" in lines[0] and "summary.json" in lines[0]
    assert "reconstruction RMSD" in lines[0]


# ---------------------------------------------------------------------------------------------
# A run's label comes from its data, never from an unrelated default.


def test_results_and_plots_of_a_file_run_carry_the_files_label(tmp_path, monkeypatch):
    """evaluate() on an MD17 run trained on 3BPA/train_300K.xyz (predictions faked: no training):
    results.json, results.md and the plot titles name the file, not the default molecule."""
    config = property_data.resolve_config(
        md17_config(train_file=str(tmp_path / "3BPA" / "train_300K.xyz"), file_energy_unit="eV")
    )
    rng = np.random.default_rng(0)
    ref, fref = rng.normal(size=5), rng.normal(size=(40, 3))
    fake = {
        "config": config,
        "saved": {"unit": "kcal/mol", "energy_offset": 0.0},
        "step": 6,
        "label": "best",
        "step_dir": "",
        "ids": np.arange(5),
        "reference": ref,
        "predicted": ref + 0.1,
        "forces_reference": fref,
        "forces_predicted": fref - 0.2,
    }
    monkeypatch.setattr(evaluation, "predict_split", lambda *a, **k: fake)
    titles = []
    monkeypatch.setattr(evaluation.plots, "parity_plot", lambda *a, title="", **k: titles.append(title))
    out = tmp_path / "eval"
    results = evaluation.evaluate(str(tmp_path / "wd"), output_dir=str(out), verbose=False)

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["label"] == saved["molecule"] == "3BPA/train_300K"
    table = (out / "results.md").read_text()
    assert "md17 (3BPA/train_300K)" in table and "aspirin" not in table
    assert "md17 (3BPA/train_300K)" in evaluation.markdown_table([results])
    assert len(titles) == 2 and all(t.startswith("3BPA/train_300K ") for t in titles), titles
    assert "aspirin" not in json.dumps(saved)
