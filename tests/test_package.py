"""The package installs with pip (setup.cfg; pyproject.toml names the build system) and its console
scripts run from any folder, installed or editable.

Each install goes into a fresh virtual environment that sees this environment's packages through a
``.pth`` file and is built with ``--no-deps --no-build-isolation --no-index``: offline and in
seconds, while the package itself (its files, entry points and configs) comes only from the
install (or, editable, from the copied sources), never from the repository.
"""

import configparser
import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT
from experiments import cli

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUP_CFG = configparser.ConfigParser()
SETUP_CFG.read(ROOT / "setup.cfg")


def cfg_list(section: str, key: str):
    """A multi-line setup.cfg value as its lines."""
    return [line.strip() for line in SETUP_CFG[section][key].splitlines() if line.strip()]


SCRIPTS = dict(
    line.replace(" ", "").split("=") for line in cfg_list("options.entry_points", "console_scripts")
)


def test_setup_cfg_declares_the_package_and_pyproject_the_build():
    """setup.cfg holds the metadata, options and entry points; pyproject.toml only the build system
    and the tools' settings."""
    assert SETUP_CFG["metadata"]["name"] == "georecon_jax"
    assert SETUP_CFG["metadata"]["version"] == "attr: georecon_jax.__version__"
    assert {"options", "options.packages.find", "options.extras_require", "options.entry_points"} <= set(
        SETUP_CFG
    )
    assert set(PYPROJECT) == {"build-system", "tool"}, sorted(PYPROJECT)
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"


def test_every_entry_point_has_a_console_script():
    assert SCRIPTS == {name: f"experiments.cli:{module}" for name, module in cli.SCRIPTS.items()}
    for name, module in cli.SCRIPTS.items():
        assert callable(getattr(cli, module)), name
    entries = {  # modules run with python -m (cli.py and configs/ are not)
        p.stem for p in (ROOT / "experiments").glob("*.py") if 'if __name__ == "__main__"' in p.read_text()
    }
    missing = entries - set(cli.SCRIPTS.values())
    assert not missing, f"entry points without a console script: {sorted(missing)}"


def test_dependencies_are_ranges_and_requirements_pin_them():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned"
            pins[name.lower()] = version
    for dep in cfg_list("options", "install_requires") + cfg_list("options.extras_require", "ase"):
        name = dep.split(">")[0].split("<")[0].split("=")[0].strip().lower()
        assert "==" not in dep, f"{dep}: the package takes ranges; requirements.txt pins"
        assert name in pins, f"{name} is a dependency but requirements.txt does not pin it"


def test_config_paths_resolve_to_the_installed_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a folder without experiments/
    own = os.path.join(cli.CONFIG_DIR, "georecon.py")
    argv = ["prog", "--config=experiments/configs/georecon.py:tiny", "--config.seed=1"]
    assert cli.resolve_config_paths(argv) == ["prog", f"--config={own}:tiny", "--config.seed=1"]
    assert cli.resolve_config_paths(["prog", "--config", "georecon.py"]) == ["prog", "--config", own]
    mine = tmp_path / "mine.py"
    mine.write_text("")
    for kept in (f"--config={mine}:tiny", "--config=elsewhere/georecon.py", "--config.data.limit=3"):
        assert cli.resolve_config_paths(["prog", kept]) == ["prog", kept]


def _copy_sources(dest: Path):
    """What an sdist holds: the metadata, the README and the two packages (no tests, no runs)."""
    dest.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for pkg in ("georecon_jax", "experiments"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _install(tmp_path: Path, *pip_args: str):
    """A fresh virtual environment (seeing this one's packages after its own) with the copied
    sources installed by ``pip install <pip_args> src``; returns (its python, src, environment)."""
    src, venv = tmp_path / "src", tmp_path / "venv"
    _copy_sources(src)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # This environment's packages (pip, setuptools, jax, ...) seen from the new one, after its own.
    Path(purelib, "_parent_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(JAX_PLATFORMS="cpu")
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    install = subprocess.run(
        [*pip, *pip_args, str(src)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    for name in SCRIPTS:
        assert (venv / "bin" / name).exists(), name
    return python, src, env


def _where_imported(python: Path, folder: Path, env) -> Path:
    """The georecon_jax package that ``python`` imports in ``folder`` (with experiments.configs)."""
    folder.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import georecon_jax, experiments.configs; print(georecon_jax.__file__)"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    return Path(where.stdout.strip())


def test_editable_install_runs_the_sources_from_another_folder(tmp_path):
    """``pip install -e``: the library, the configs and the console scripts are the sources'."""
    python, src, env = _install(tmp_path, "-e")
    elsewhere = tmp_path / "elsewhere"
    assert _where_imported(python, elsewhere, env) == src / "georecon_jax" / "__init__.py"
    configs = subprocess.run(
        [str(python), "-c", "from experiments import cli; print(cli.CONFIG_DIR)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert Path(configs.stdout.strip()) == src / "experiments" / "configs", configs.stderr[-2000:]
    (elsewhere / "not_a_workdir").mkdir()
    run = subprocess.run(  # a console script, refusing a folder that holds no run: the code ran
        [str(tmp_path / "venv" / "bin" / "georecon-evaluate"), "--workdir=not_a_workdir"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "not_a_workdir" in run.stderr, run.stderr[-2000:]


@pytest.mark.slow
def test_pip_install_then_pretrain_from_another_folder(tmp_path, cache_dir):
    python, _, env = _install(tmp_path)
    env.update(GEORECON_CACHE=cache_dir)
    elsewhere = tmp_path / "elsewhere"
    assert _where_imported(python, elsewhere, env).is_relative_to(tmp_path / "venv")
    run = subprocess.run(
        [
            str(tmp_path / "venv" / "bin" / "georecon-pretrain"),
            "--config=experiments/configs/georecon.py:tiny",  # no such path here: the installed config
            "--workdir=run",
            "--config.objective.num_recon_molecules=0",
            "--config.checkpoint_every=8",  # the step is tests/test_pretrain_e2e.py's (one compilation)
            "--config.eval_every=0",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert (elsewhere / "run" / "summary.json").exists()
    assert '"steps": 8' in (elsewhere / "run" / "summary.json").read_text()


def test_every_entry_point_applies_the_accelerator_settings(tmp_path, monkeypatch):
    """config.matmul_precision (default 'highest') and config.compilation_cache_dir reach JAX before
    the job runs; an unknown precision is refused naming the valid ones."""
    import jax
    from absl import flags

    from experiments.configs import georecon
    from georecon_jax.training.precision import apply_accelerator_settings

    for name in ("georecon", "coord", "finetune_qm9", "finetune_md17", "mrl3d", "mrl_finetune"):
        c = __import__(f"experiments.configs.{name}", fromlist=["get_config"]).get_config("tiny")
        assert c.matmul_precision == "highest" and c.compilation_cache_dir is None, name
    seen = {}
    old_precision, old_cache = jax.config.jax_default_matmul_precision, jax.config.jax_compilation_cache_dir
    try:
        c = georecon.get_config("tiny")
        c.update(matmul_precision="bf16", compilation_cache_dir=str(tmp_path / "xla"))
        monkeypatch.setattr(flags, "FLAGS", type("F", (), {"config": c, "workdir": "w"})())
        monkeypatch.setattr(cli.app, "run", lambda main, **kwargs: main(["prog"]))
        cli.run_with_config(
            lambda config, workdir: seen.update(
                precision=jax.config.jax_default_matmul_precision, cache=jax.config.jax_compilation_cache_dir
            )
        )
        assert seen == {"precision": "bfloat16", "cache": str(tmp_path / "xla")}
        assert (tmp_path / "xla").is_dir()
        assert apply_accelerator_settings({})["matmul_precision"] == "highest"  # configs from before
        with pytest.raises(ValueError, match="matmul_precision='fp8'.*highest"):
            apply_accelerator_settings({"matmul_precision": "fp8"})
    finally:
        jax.config.update("jax_default_matmul_precision", old_precision)
        jax.config.update("jax_compilation_cache_dir", old_cache)
