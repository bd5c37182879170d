"""Predict a fine-tuned model's target for molecules you bring:

  python -m experiments.predict --workdir=runs/ft_homo --input=molecules.xyz --output=homo.csv
  python -m experiments.predict --workdir=runs/ft_aspirin --input=frames.extxyz --output=aspirin.csv
  python -m experiments.predict --workdir=homo.npz --input=molecules.smi --output=homo.csv

--workdir is a fine-tuning workdir (its best checkpoint, EMA weights when the run kept them) or a
file written by experiments.export. --input: .xyz/.extxyz (one or many frames), .sdf/.mol, or
SMILES (.smi/.smiles/.txt one per line with an optional name; .csv with a 'smiles' column), each
SMILES embedded as one ETKDG conformer with every hydrogen (--seed). The CSV has one row per
molecule (index, name, source, formula, n_atoms, the target in its unit, unit, error); a molecule
that cannot be predicted (unreadable, an element the model never saw, more than --max_atoms atoms)
has its reason in the error column and the others still run. Energy models (MD17 fine-tuning)
also write forces, -dE/dR, to --forces_output (default <output>.forces.npz; .xyz/.extxyz writes
extended XYZ). Exits with status 1 when no molecule could be predicted; an input with no readable
molecule (an empty file, SMILES RDKit rejects) is refused in one line before the model is loaded.
"""

import os
import sys

from absl import app, flags

from experiments.cli import exit_with_error, parse_flags, setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A fine-tuning workdir, or a model file written by experiments.export.")
flags.DEFINE_string("input", None, "Molecules: .xyz/.extxyz, .sdf/.mol, .smi/.smiles/.txt or .csv of SMILES.")
flags.DEFINE_string("output", None, "The CSV to write (one row per input molecule).")
flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number (workdirs only).")
flags.DEFINE_string(
    "forces_output", None, "Forces of energy models (.npz or .xyz); default <output>.forces.npz."
)
flags.DEFINE_bool("forces", None, "Compute forces (default: for MD17-type energy models).")
flags.DEFINE_integer("seed", 0, "ETKDG seed of SMILES conformers.")
flags.DEFINE_bool("mmff", False, "MMFF-optimise SMILES conformers.")
flags.DEFINE_integer("max_atoms", 128, "Molecules with more atoms are refused (their row says so).")
flags.DEFINE_integer("batch_atoms", 512, "Atoms per padded batch.")
flags.DEFINE_string(
    "matmul_precision", None, "float32 matrix-product precision; default: the run's config's."
)
flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from georecon_jax.data.records import DataError
    from georecon_jax.data.structures import read_structures
    from georecon_jax.tasks.evaluation import CheckpointError, WorkdirError
    from georecon_jax.tasks.inference import load_model

    try:
        # the input first: a file with no usable molecule fails before any model is built
        structures = read_structures(FLAGS.input, seed=FLAGS.seed, mmff=FLAGS.mmff)
        readable = [s for s in structures if s.error is None]
        if not readable:
            reason = " (empty)"
            if structures:
                more = f" (+{len(structures) - 1} more)" if len(structures) > 1 else ""
                reason = f": {structures[0].error}{more}"
            raise DataError(f"{FLAGS.input}: no molecule could be read{reason}")
        model = load_model(
            FLAGS.workdir,
            FLAGS.checkpoint,
            max_atoms=FLAGS.max_atoms,
            batch_atoms=FLAGS.batch_atoms,
            matmul_precision=FLAGS.matmul_precision,
        )
        result = model.predict(structures, forces=FLAGS.forces, progress=True)
    except (WorkdirError, CheckpointError, DataError, ValueError) as e:
        exit_with_error(e)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    result.to_csv(FLAGS.output)
    print(f"{model}: {int(result.ok.sum())} of {len(result)} molecules predicted -> {FLAGS.output}")
    if result.forces is not None:
        path = FLAGS.forces_output or os.path.splitext(FLAGS.output)[0] + ".forces.npz"
        n = result.write_forces(path)
        print(f"forces ({result.force_unit}) of {n} molecules -> {path}")
    if len(result) and not result.ok.any():
        sys.exit(f"error: none of the {len(result)} molecules could be predicted (see {FLAGS.output})")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
