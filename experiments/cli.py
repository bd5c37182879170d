"""What every entry point shares: the --config/--workdir flags and logging for a person at a terminal."""

import logging as py_logging
import sys
from typing import Callable

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


def run_with_config(run: Callable):
    """absl's ``app.run`` of ``run(config, workdir)`` with the flags above and logging set up."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        setup_logging()
        run(flags.FLAGS.config, flags.FLAGS.workdir)

    app.run(main)
