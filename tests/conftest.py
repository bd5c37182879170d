"""Shared fixtures: a per-session QM9 cache of the first molecules, real data paths, helpers."""

import os
import string
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

jax.config.update("jax_debug_nans", False)


def pytest_configure(config):
    """One persistent XLA compilation cache for the session, shared with the subprocesses that the
    end-to-end tests start: the tiny model compiles once, not once per run.

    The tests' tiny models spend far more time compiling than running, so XLA's LLVM backend runs
    at optimisation level 0 here (halves the compile time of a tiny GeoRecon step, 13 -> 6 s on
    2 cores), and fusions are emitted by XLA:CPU's older loop emitters rather than its fusion
    emitters (a tiny GeoRecon step: 6.4 -> 4.8 s to compile, 2026-12-04, alternated twice). Only
    the machine code changes, not the HLO program; training and the benchmarks run with XLA's
    defaults. Set ``GEORECON_TEST_XLA_OPT=1`` to test with the defaults.
    """
    import tempfile

    if os.environ.get("GEORECON_TEST_XLA_OPT", "0") != "1":
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags:
            flags += " --xla_backend_optimization_level=0"
        if "xla_cpu_use_fusion_emitters" not in flags:
            flags += " --xla_cpu_use_fusion_emitters=false"
        os.environ["XLA_FLAGS"] = flags.strip()
    # Every entry point runs at matmul_precision 'highest' (training/precision.py), and the
    # precision is part of the compiled program: the same here and in the subprocesses, an
    # in-process run and a command's run of the same config share their cache entries.
    # (On CPU float32 products are exact at any setting: no result changes.)
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    jax.config.update("jax_default_matmul_precision", os.environ["JAX_DEFAULT_MATMUL_PRECISION"])
    d = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="georecon_jax_xla_"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", d)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def pytest_collection_modifyitems(config, items):
    """The modules with end-to-end tests (marked ``slow``) run first: under pytest-xdist (the
    README's test command, ``-n 2 --dist loadfile``) a long test started last would leave the other
    worker idle at the end. Whole modules move, in collection order, so that a module-scoped
    fixture (a training run) is made once: sorting the tests themselves split such modules in two
    and made their fixtures twice (17-20 s each, tests/test_pretrain_e2e.py)."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.module.__name__ not in slow)


def require_shared(sub: str = "") -> Path:
    """The path of a file or folder in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"{path} is absent: the real reference data lives in ../shared/data beside the repo")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qm9_cache")
    os.environ["GEORECON_CACHE"] = str(d)
    return str(d)


@pytest.fixture(scope="session")
def qm9_small(cache_dir):
    """The first 400 QM9 molecules (real, from qm9pack) and their split."""
    from georecon_jax.data.qm9 import load_qm9

    return load_qm9(cache_dir=cache_dir, limit=400, verbose=False)


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


_JITTED = {}


def jitted(fn, static_argnums=()):
    """``jax.jit(fn)``, one per function (``module.init`` / ``module.apply``; ``method=`` is static):
    run eagerly, a model dispatches op by op, several times slower than compiled on these inputs.
    ``static_argnums``: e.g. the graph count that sizes segment sums."""
    key = (fn, static_argnums)
    if key not in _JITTED:
        _JITTED[key] = jax.jit(fn, static_argnums=static_argnums, static_argnames=("method",))
    return _JITTED[key]


def kill_after_first_checkpoint(cmd, checkpoints, env, timeout: float = 300.0):
    """Starts ``cmd`` (from the repository root), SIGKILLs it as soon as a checkpoint step folder
    appears in ``checkpoints``, and returns the checkpointed steps. Fails when the run ended on its
    own before it could be killed (the test would prove nothing)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = Path(checkpoints)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if checkpoints.exists() and any(p.isdigit() for p in os.listdir(checkpoints)):
            break
        time.sleep(0.05)
    was_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert was_running, "the run finished before it could be killed: the test would prove nothing"
    return sorted(int(p) for p in os.listdir(checkpoints) if p.isdigit())


# Helpers shared by several test modules.

#: Printable text of up to 400 characters: the body of a malformed input file (hypothesis).
csv_text = st.text(alphabet=string.printable, max_size=400)


def toy_state(value=1.0):
    """A train state of one parameter vector ``w`` (3 copies of ``value``) under SGD, no model."""
    import jax.numpy as jnp
    import optax

    from georecon_jax.training.state import create_train_state

    params = {"w": jnp.full((3,), value, jnp.float32)}
    return create_train_state(lambda p, x: x, params, optax.sgd(0.1), use_ema=False)


def nan_step(max_bad):
    """A train step on a toy loss that is NaN whenever the batch says so: (mesh, step,
    ``batch(bad)``), a one-device batch whose loss is NaN when ``bad`` > 0."""
    import jax.numpy as jnp
    import jraph

    from georecon_jax.training import steps as steps_lib
    from georecon_jax.training.state import make_mesh

    mesh = make_mesh(1)

    def loss_fn(params, graph, key):
        bad = graph.globals[0]
        per_graph = jnp.sum(params["w"] ** 2) * jnp.ones(graph.n_node.shape[0]) + jnp.where(
            bad > 0, jnp.nan, 0.0
        )
        return per_graph, {}

    step = steps_lib.make_train_step(loss_fn, mesh, jax.random.PRNGKey(0))

    def batch(bad):
        g = jraph.GraphsTuple(
            nodes=np.zeros((1, 2, 1), np.float32),
            edges=None,
            senders=np.zeros((1, 1), np.int32),
            receivers=np.zeros((1, 1), np.int32),
            n_node=np.array([[1, 1]], np.int32),
            n_edge=np.array([[1, 0]], np.int32),
            globals=np.array([[bad, bad]], np.float32),
        )
        return g

    return mesh, step, batch


def md17_config(**data):
    """experiments/configs/finetune_md17.py at paper scale (molecule 'aspirin', the default) with
    ``data`` set in its data section."""
    from experiments.configs import finetune_md17

    c = finetune_md17.get_config()  # molecule="aspirin", the default
    c.data.update(data)
    return c


def qm9_mol(mols, k):
    """An RDKit molecule of QM9 molecule k: its real coordinates (a 3D conformer) and bonds from
    its geometry (for SDF files written from real molecules)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    z, pos = mols.molecule(k)
    rw = Chem.RWMol()
    for a in z:
        rw.AddAtom(Chem.Atom(int(a)))
    conf = Chem.Conformer(len(z))
    for i, xyz in enumerate(pos):
        conf.SetAtomPosition(i, Point3D(*map(float, xyz)))
    conf.Set3D(True)
    rw.AddConformer(conf, assignId=True)
    rdDetermineBonds.DetermineConnectivity(rw)
    return rw
