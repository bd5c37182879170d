"""Weights without orbax: experiments.export writes parameters + resolved config to one .npz that
numpy reads without pickles, and load_model gives the same model from it as from the workdir."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from finetuned_workdirs import qm9_workdir
from georecon_jax import load_model
from georecon_jax.tasks.inference import EXPORT_FORMAT


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, qm9_small):
    return qm9_workdir(tmp_path_factory, "U0")


def test_export_round_trips(workdir, qm9_small, tmp_path):
    out = tmp_path / "model.npz"
    run = subprocess.run(
        [sys.executable, "-m", "experiments.export", f"--workdir={workdir}", f"--out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "qm9 U0 (eV), best checkpoint step 6 (EMA weights)" in run.stdout

    with np.load(out, allow_pickle=False) as f:  # plain arrays and JSON strings
        meta = json.loads(str(f["meta"]))
        config = json.loads(str(f["config"]))
        stats = json.loads(str(f["target_stats"]))
        names = [k for k in f.files if k.startswith("variables/params/encoder/")]
    assert meta["format"] == EXPORT_FORMAT and meta["uses_ema"] and meta["elements"] == [1, 6, 7, 8, 9]
    assert config["target"] == "U0" and config["model"]["head"]["kind"] == "equivariant_scalar"  # resolved
    assert stats["reference"] == "least_squares" and names

    from_workdir, from_file = load_model(workdir), load_model(out)
    a, b = jax.tree_util.tree_flatten(from_workdir.params), jax.tree_util.tree_flatten(from_file.params)
    assert a[1] == b[1]  # the same tree
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert (from_file.task, from_file.target, from_file.unit, from_file.elements) == (
        "qm9",
        "U0",
        "eV",
        from_workdir.elements,
    )
    mols, splits = qm9_small
    molecules = [mols.molecule(i) for i in splits["test"][:6]]
    np.testing.assert_array_equal(from_file.predict(molecules).values, from_workdir.predict(molecules).values)


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not a georecon_jax export"):
        load_model(tmp_path / "other.npz")
