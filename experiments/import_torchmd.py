"""Import a torchmd-net checkpoint as a workdir of this library:

  python -m experiments.import_torchmd --checkpoint=FILE.ckpt --workdir=DIR [--kind=auto]
      [--config=experiments/configs/finetune_qm9.py[:size] --config.data.limit=...]
      [--hparams=hparams.yaml] [--target=homo] [--vec_norm=whitened_reference]

Reads a torchmd-net 3.x or pre-training-via-denoising checkpoint (a Lightning ``.ckpt`` or a
``torch.save``'d state dict; no torch needed) and writes (georecon_jax/interop/torchmd_workdir.py):

  --kind=finetuned   a QM9/MD17 fine-tuning workdir: ``experiments.evaluate --workdir=DIR``,
                     ``experiments.predict`` and ``--config.pretrained=DIR`` take it;
  --kind=pretrained  a Coord pretraining workdir (encoder + noise head): ``experiments.finetune
                     --config.pretrained=DIR`` takes it;
  --kind=auto        fine-tuned when the checkpoint has an output model and was trained on QM9 or
                     MD17 (hyper-parameters ``dataset``/``dataset_arg``), pretrained otherwise.

``--config`` is the config the workdir records (default: finetune_qm9.py, finetune_md17.py or
coord.py at paper scale); the encoder, head and statistics come from the checkpoint. Anything the
JAX model cannot represent is refused with a message naming it.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from experiments.cli import exit_with_error, parse_flags, resolve_config_paths, setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A torchmd-net .ckpt (Lightning) or torch.save'd state dict.")
flags.DEFINE_string("workdir", None, "The workdir to write (must not hold a run).")
flags.DEFINE_enum("kind", "auto", ["auto", "finetuned", "pretrained"], "What the workdir is.")
flags.DEFINE_string("hparams", None, "YAML/JSON hyper-parameters (needed for a bare state dict).")
flags.DEFINE_string("target", None, "QM9 target (default: the checkpoint's dataset_arg).")
flags.DEFINE_string("molecule", None, "MD17 molecule (default: the checkpoint's dataset_arg).")
flags.DEFINE_enum(
    "vec_norm",
    "whitened_reference",
    ["whitened_reference", "whitened"],
    "The JAX vector norm of a whitened checkpoint: the reference's eps*diag(1,2,3) or eps*I.",
)
config_flags.DEFINE_config_file(
    "config", None, "The config the workdir records (path[:size]).", lock_config=True
)
flags.mark_flags_as_required(["checkpoint", "workdir"])


def default_config(kind: str, task):
    if kind == "pretrained":
        from experiments.configs import coord

        return coord.get_config()
    if task == "md17":
        from experiments.configs import finetune_md17

        return finetune_md17.get_config()
    from experiments.configs import finetune_qm9

    return finetune_qm9.get_config()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from georecon_jax.interop.torchmd import TorchmdImportError, read_torchmd
    from georecon_jax.interop import torchmd_workdir as w

    try:
        model = read_torchmd(FLAGS.checkpoint, FLAGS.hparams, FLAGS.vec_norm)
        config = FLAGS.config
        kind = w.resolve_kind(model, FLAGS.kind)
        if config is None:
            config = default_config(kind, model.task)
        if kind == "finetuned":
            config = w.finetune_config(config, model, FLAGS.target, FLAGS.molecule)
            record = w.write_finetune_workdir(model, config, FLAGS.workdir)
        else:
            config = w.pretraining_config(config, model)
            record = w.write_pretraining_workdir(model, config, FLAGS.workdir)
    except (TorchmdImportError, OSError) as e:
        exit_with_error(e)
    what = f"{config.task} {config.target}" if kind == "finetuned" else "Coord pretraining"
    print(
        f"{FLAGS.checkpoint} ({record['format']}, step {record['step']}) -> {FLAGS.workdir}: {what} workdir, "
        f"encoder {model.encoder}"
    )


if __name__ == "__main__":
    sys.argv[:] = resolve_config_paths(sys.argv)
    app.run(main, flags_parser=parse_flags)
