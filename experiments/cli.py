"""What every entry point shares: the --config/--workdir flags, logging for a person at a terminal,
the accelerator settings (``config.matmul_precision``, ``config.compilation_cache_dir``), and the
console scripts that ``pip install`` puts on the PATH (``georecon-pretrain`` runs exactly what
``python -m experiments.pretrain`` runs, with the same flags)."""

import logging as py_logging
import os
import re
import runpy
import shutil
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
        workdir = flags.FLAGS.workdir
        existed = os.path.isdir(workdir)
        fresh = not existed or not os.listdir(workdir)
        try:
            run(flags.FLAGS.config, workdir)
        except Exception as e:
            if not isinstance(e, user_errors()):
                raise
            if fresh:
                discard_unfinished(workdir, keep_folder=existed)
            exit_with_error(e)

    sys.argv[:] = resolve_config_paths(sys.argv)
    app.run(main, flags_parser=parse_flags)


def parse_flags(argv: List[str]) -> List[str]:
    """absl's flag parsing, with a bad flag or config override (an unknown key, a value of the
    wrong type) as one line on stderr and exit status 1 (absl prints two and its usage hint)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {one_line(e)}")
    except (KeyError, AttributeError) as e:  # ml_collections: an override of a field the config lacks
        sys.exit(f"error: {unknown_field(argv, str(e))}")


def unknown_field(argv: List[str], message: str) -> str:
    """One line for ml_collections' error on a ``--config.a.b=value`` naming a field the config
    lacks (``message`` quotes the field, and may suggest the closest): the override and the field."""
    key = re.search(r"[\w-]+", message)  # the message quotes the key once or twice
    key = key.group(0) if key else message
    close = re.search(r'Did you mean "([^"]+)"', message)
    hint = f" (did you mean {close.group(1)!r}?)" if close else ""
    override = [a for a in argv if a.startswith("--config.") and key in a.partition("=")[0].split(".")]
    return f"{override[0] + ': ' if override else ''}the config has no field {key!r}{hint}"


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 1, no traceback.


def user_errors() -> tuple:
    """The library's exceptions that mean bad input, not a bug: a file, record or data set that
    cannot be used (`DataError`), an invalid config (`ConfigError`), a workdir or checkpoint that
    is not what the command needs, a config that differs from the workdir's run. Their messages
    name the input and the reason."""
    from georecon_jax.data.records import DataError
    from georecon_jax.tasks.evaluation import CheckpointError, WorkdirError
    from georecon_jax.training.loop import ConfigMismatchError
    from georecon_jax.training.runner import ConfigError
    from georecon_jax.training.transfer import PretrainedMismatchError

    return (
        DataError,
        ConfigError,
        ConfigMismatchError,
        PretrainedMismatchError,
        WorkdirError,
        CheckpointError,
    )


def one_line(error: BaseException) -> str:
    """``error``'s message on one line: its first line, then the others joined by '; '."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")


def exit_with_error(error: BaseException):
    """Exits with status 1 and ``error: <message>`` as one line on stderr."""
    sys.exit(f"error: {one_line(error)}")


def discard_unfinished(workdir: str, keep_folder: bool):
    """Removes what a run that failed on bad input wrote into a workdir that was empty or absent
    before it (its config.json would pin the bad config on a rerun), unless a checkpoint was saved;
    the folder itself too unless ``keep_folder``."""
    if not os.path.isdir(workdir):
        return
    for root, dirs, _ in os.walk(workdir):
        if os.path.basename(root) == "checkpoints" and any(d.isdigit() for d in dirs):
            return
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    if not keep_folder:
        os.rmdir(workdir)


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
# Console scripts (setup.cfg [options.entry_points]): each runs ``python -m experiments.<name>``.

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
