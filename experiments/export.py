"""Export a fine-tuned model's weights without orbax:

  python -m experiments.export --workdir=runs/ft_homo --out=homo.npz [--checkpoint=best]

Writes one .npz: every parameter of the checkpoint (EMA weights when the run kept them) under
``variables/<collection>/<module path>`` and, as JSON strings, the resolved config (``config``),
the target statistics and references (``target_stats``) and where it came from (``meta``: workdir,
step, checkpoint, elements, format). ``np.load`` reads it without pickles;
``georecon_jax.load_model("homo.npz")`` and ``experiments.predict --workdir=homo.npz`` use it as
they use the workdir.
"""

import os
import sys

from absl import app, flags

from experiments.cli import exit_with_error, parse_flags, setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A fine-tuning workdir.")
flags.DEFINE_string("out", None, "The .npz file to write.")
flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from georecon_jax.tasks.evaluation import CheckpointError, WorkdirError
    from georecon_jax.tasks.inference import export_model

    if not FLAGS.out.endswith(".npz"):
        sys.exit(f"error: --out={FLAGS.out}: the export is an .npz file")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        meta = export_model(FLAGS.workdir, FLAGS.out, FLAGS.checkpoint)
    except (WorkdirError, CheckpointError) as e:
        exit_with_error(e)
    size = os.path.getsize(FLAGS.out) / 2**20
    print(
        f"{FLAGS.workdir}: {meta['task']} {meta['target']} ({meta['unit']}), {meta['checkpoint']} checkpoint step "
        f"{meta['step']}{' (EMA weights)' if meta['uses_ema'] else ''} -> {FLAGS.out} ({size:.2f} MiB)"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
