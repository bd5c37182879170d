"""Bad input at every entry point: one line on stderr naming the input and the reason, a non-zero
exit status, no traceback, and no workdir left that a rerun would take for a run.

Each case runs ``python -m experiments.<entry point>`` as a user would (docs/troubleshooting.md,
"Bad input at an entry point"). Most fail before any model is built: flags, files and data are
checked first.
"""

import os
import subprocess
import sys
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from georecon_jax.data.records import DataError
from georecon_jax.data.structures import read_structures

PAIRS = ["--config=experiments/configs/mrl_finetune.py:tiny", "--config.data.preset="]


def pair_file(tmp, name, rows, header="a,b,y"):
    path = tmp / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def pairs(path, task="classification", *extra):
    cols = ["--config.data.smiles_columns=a,b", "--config.data.label_columns=y", f"--config.data.task={task}"]
    return [*PAIRS, f"--config.data.files={path}", *cols, *extra]


SMALL = ["CCO", "CCN", "CCC", "CO", "CN", "OCCO"]


def cases(tmp):
    """(id, entry point, arguments, words the error line must hold), with their files in ``tmp``."""
    (tmp / "not_a_workdir").mkdir()
    text = tmp / "notes.txt"
    text.write_text("not a checkpoint\n")
    bad_coord = tmp / "frames.xyz"  # the second atom lacks its z coordinate
    bad_coord.write_text("2\nframe 0\nO 0.0 0.0 0.0\nH 0.0 0.9\n")
    (tmp / "bad.smi").write_text("C1CC(\nnot_a_smiles\n")
    (tmp / "empty.xyz").write_text("")
    binary = tmp / "pairs.csv"  # a zip file under a CSV's name
    with zipfile.ZipFile(binary, "w") as z:
        z.writestr("x.bin", os.urandom(4096))
    negatives = pair_file(tmp, "negatives.csv", [f"{a},{b},0" for a in SMALL for b in SMALL[:3]])
    positives = pair_file(tmp, "positives.csv", [f"{a},{b},1" for a in SMALL for b in SMALL[:3]])
    rejected = pair_file(tmp, "rejected.csv", ["C1CC(,CCO,1.5", "not_a_smiles,CCO,0.3"])
    return [
        (
            "wrong type",
            "pretrain",
            ["--config=experiments/configs/coord.py:tiny", "--config.batch_size=eight"],
            ["batch_size", "eight"],
        ),
        (
            "unknown key",
            "finetune",
            ["--config=experiments/configs/finetune_qm9.py:tiny", "--config.optim.lr=1"],
            ["optim.lr"],
        ),
        (
            "invalid value",
            "pretrain",
            ["--config=experiments/configs/coord.py:tiny", "--config.num_steps=0"],
            ["num_steps=0"],
        ),
        (
            "xyz missing coordinate",
            "finetune",
            ["--config=experiments/configs/finetune_md17.py:tiny", f"--config.data.train_file={bad_coord}"],
            ["frames.xyz"],
        ),
        (
            "xyz with no frames",
            "finetune",
            [
                "--config=experiments/configs/finetune_md17.py:tiny",
                f"--config.data.train_file={tmp / 'empty.xyz'}",
            ],
            ["empty.xyz"],
        ),
        ("pairs: no positives", "finetune_pairs", pairs(negatives), ["negatives.csv", "no positive"]),
        (
            "pairs: one class",
            "finetune_pairs",
            pairs(positives, "classification", "--config.data.negatives=file"),
            ["positives", "one class only"],
        ),
        (
            "pairs: SMILES rejected",
            "finetune_pairs",
            pairs(rejected, "regression"),
            ["rejected.csv", "no usable pairs"],
        ),
        ("pairs: not a CSV", "finetune_pairs", pairs(binary), ["pairs.csv"]),
        (
            "pairs: a split of size 0",
            "finetune_pairs",
            pairs(
                pair_file(tmp, "three.csv", ["CCO,CCN,1.0", "CCC,CO,2.0", "CN,OCCO,3.0"]),
                "regression",
                "--config.num_folds=5",
            ),
            ["three", "split", "no"],
        ),
        ("evaluate: not a workdir", "evaluate", [], ["not_a_workdir"]),
        ("export: not a workdir", "export", [f"--out={tmp / 'x.npz'}"], ["not_a_workdir"]),
        (
            "predict: SMILES rejected",
            "predict",
            [f"--input={tmp / 'bad.smi'}", f"--output={tmp / 'p.csv'}"],
            ["bad.smi", "no molecule could be read"],
        ),
        ("import_torchmd: not a checkpoint", "import_torchmd", [f"--checkpoint={text}"], ["notes.txt"]),
    ]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    known = {c[0]: c[1:] for c in cases(tmp)}
    assert sorted(known) == sorted(NAMES)
    return tmp, known


NAMES = [
    "wrong type", "unknown key", "invalid value", "xyz missing coordinate", "xyz with no frames",
    "pairs: no positives", "pairs: one class", "pairs: SMILES rejected", "pairs: not a CSV",
    "pairs: a split of size 0", "evaluate: not a workdir", "export: not a workdir",
    "predict: SMILES rejected", "import_torchmd: not a checkpoint",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_one_line_and_no_run(name, table, cache_dir):
    tmp, known = table
    entry, args, words = known[name]
    workdir = tmp / f"run_{NAMES.index(name)}"
    where = str(tmp / "not_a_workdir") if entry in ("evaluate", "export", "predict") else str(workdir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", GEORECON_CACHE=cache_dir)
    out = subprocess.run(
        [sys.executable, "-m", f"experiments.{entry}", *args, f"--workdir={where}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0, out.stdout[-2000:]
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not workdir.exists(), sorted(os.listdir(workdir))  # nothing a rerun would resume or compare


# ------------------------------------------------------------------- a loader of free text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.text(alphabet=st.sampled_from(list("0123456789 .-+eEHCONxyz*^\n\t=:\"'")), max_size=200))
def test_xyz_reader_reads_or_names_the_problem(tmp_path, body):
    """Any text as an .xyz file: molecules, records whose error names the file, or a `DataError`;
    never another exception."""
    path = tmp_path / "input.xyz"
    path.write_text(body)
    try:
        structures = read_structures(str(path))
    except DataError as e:
        assert "input.xyz" in str(e)
        return
    for s in structures:
        assert (s.error is None) == (s.atomic_numbers is not None), s
        if s.error is not None:
            assert "input.xyz" in s.error or "input.xyz" in s.source, s
