"""What every entry point shares: the --config/--workdir flags, logging for a person at a terminal,
the accelerator settings (``config.matmul_precision``, ``config.compilation_cache_dir``), and the
console scripts that ``pip install`` puts on the PATH (``georecon-pretrain`` runs exactly what
``python -m experiments.pretrain`` runs, with the same flags)."""

import logging as py_logging
import os
import runpy
import sys
from typing import Callable, List, Optional

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags


def setup_logging(level: int = py_logging.INFO):
    """The library's messages (``georecon_jax.*`` loggers) as plain lines on stdout (progress
    bars are on stderr); orbax's and absl's own chatter at WARNING (orbax logs every file it
    writes at INFO)."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logger = py_logging.getLogger("georecon_jax")
    if not any(getattr(h, "_georecon", False) for h in logger.handlers):
        handler = py_logging.StreamHandler(sys.stdout)
        handler.setFormatter(py_logging.Formatter("%(message)s"))
        handler._georecon = True
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def define_config_and_workdir(workdir_help: str):
    """``--config=path[:size]`` (an ml_collections config file; any field overridable as
    ``--config.a.b=value``, unknown keys refused) and ``--workdir`` (required)."""
    config_flags.DEFINE_config_file("config", None, "Config file (path[:size]).", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])


def apply_accelerator_settings(config) -> dict:
    """``config.matmul_precision`` (default 'highest') and ``config.compilation_cache_dir`` applied
    to JAX before anything is traced (georecon_jax/training/precision.py)."""
    from georecon_jax.training.precision import apply_accelerator_settings as apply

    return apply(config)


def run_with_config(run: Callable):
    """absl's ``app.run`` of ``run(config, workdir)`` with the flags above, logging set up and the
    accelerator settings applied."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        setup_logging()
        try:
            apply_accelerator_settings(flags.FLAGS.config)
        except ValueError as e:
            raise app.UsageError(str(e))
        run(flags.FLAGS.config, flags.FLAGS.workdir)

    sys.argv[:] = resolve_config_paths(sys.argv)
    app.run(main)


# ---------------------------------------------------------------------------------------------
# Config files by path, from any folder.

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def find_config_file(path: str) -> Optional[str]:
    """``path`` when it exists; else, for ``experiments/configs/<file>`` or a bare ``<file>``, that
    file among this package's configs (so that ``--config=experiments/configs/georecon.py`` and
    ``--config=georecon.py`` work from any folder once the package is installed); else None."""
    if os.path.exists(path):
        return path
    parts = os.path.normpath(path).split(os.sep)
    if parts[:2] == ["experiments", "configs"] and len(parts) > 2:
        candidate = os.path.join(CONFIG_DIR, *parts[2:])
    elif len(parts) == 1:  # a bare file name: georecon.py
        candidate = os.path.join(CONFIG_DIR, parts[0])
    else:
        return None
    return candidate if os.path.isfile(candidate) else None


def resolve_config_paths(argv: List[str]) -> List[str]:
    """``argv`` with a ``--config=PATH[:size]`` (or ``--config PATH[:size]``) whose PATH does not
    exist here replaced by the installed config of that name (`find_config_file`); anything else
    unchanged (a missing file then fails in ml_collections, naming it)."""

    def fix(value: str) -> str:
        path, sep, size = value.partition(":")
        found = find_config_file(path)
        return value if found is None or found == path else found + sep + size

    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + fix(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = fix(out[i + 1])
    return out


# ---------------------------------------------------------------------------------------------
# Console scripts (pyproject.toml [project.scripts]): each runs ``python -m experiments.<name>``.

SCRIPTS = {
    "georecon-pretrain": "pretrain",
    "georecon-finetune": "finetune",
    "georecon-evaluate": "evaluate",
    "georecon-predict": "predict",
    "georecon-finetune-pairs": "finetune_pairs",
    "georecon-export": "export",
    "georecon-import-torchmd": "import_torchmd",
    "georecon-z-variants": "z_variants",
    "georecon-study": "study",
}


def run_entry_point(name: str):
    """Runs ``experiments.<name>`` as ``python -m`` would (as ``__main__``, same flags)."""
    runpy.run_module(f"experiments.{name}", run_name="__main__", alter_sys=True)


def pretrain():
    run_entry_point("pretrain")


def finetune():
    run_entry_point("finetune")


def evaluate():
    run_entry_point("evaluate")


def predict():
    run_entry_point("predict")


def finetune_pairs():
    run_entry_point("finetune_pairs")


def export():
    run_entry_point("export")


def import_torchmd():
    run_entry_point("import_torchmd")


def z_variants():
    run_entry_point("z_variants")


def study():
    run_entry_point("study")
