"""What every entry point shares: logging set up for a person at a terminal."""
import logging as py_logging
import sys

from absl import logging as absl_logging


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
