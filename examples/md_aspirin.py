"""Short Langevin dynamics of aspirin with a model fine-tuned on rMD17 aspirin, through the ASE
calculator; plots the energies and the temperature over time.

  # 1. fine-tune on the shared rMD17 aspirin file (2 CPU cores: 5 minutes; test MAE 1.01 kcal/mol,
  #    forces 1.73 kcal/mol/Å on 2026-12-03). vec_norm=none: with the whitened vector norm this
  #    run's loss is non-finite from its first steps at the time of writing
  python -m experiments.finetune --config=experiments/configs/finetune_md17.py:quick \\
      --config.molecule=aspirin --config.data.data_dir=../shared/data/rmd17 \\
      --config.num_steps=1500 --config.model.encoder.vec_norm=none --workdir=runs/aspirin
  # 2. 1 ps of dynamics at 300 K from the first test frame (0.5 fs steps)
  python examples/md_aspirin.py --model=runs/aspirin --steps=2000 --out=runs/md_aspirin

Writes into --out: md_aspirin.png (potential, kinetic and total energy in eV; temperature in K),
md_aspirin.csv (the same numbers) and md_aspirin.xyz (every --every-th frame, extended XYZ with
energies and forces). --model also takes a file written by experiments.export. Needs ASE
(pip install 'georecon_jax[ase]').
"""

import argparse
import csv
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import georecon_jax  # noqa: F401 - installed (pip install -e .)
except ImportError:  # run from a clone without installing: the repository's copy
    sys.path.insert(0, os.path.dirname(HERE))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/aspirin", help="a fine-tuned rMD17 workdir or an exported .npz")
    p.add_argument(
        "--data",
        default=os.path.join(HERE, "..", "..", "shared", "data", "rmd17", "rmd17_aspirin_test_01.npz"),
        help="rMD17 file whose frame starts the trajectory",
    )
    p.add_argument("--frame", type=int, default=0, help="starting frame")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--friction", type=float, default=0.01, help="1/fs")
    p.add_argument("--every", type=int, default=10, help="record every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/md_aspirin")
    return p.parse_args(argv)


def plot(rows, path, temperature, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["time_ps"] for r in rows])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    e0 = rows[0]["total_eV"]
    for key, label in (("potential_eV", "potential"), ("kinetic_eV", "kinetic"), ("total_eV", "total")):
        ax1.plot(t, [r[key] - (e0 if key != "kinetic_eV" else 0.0) for r in rows], label=label)
    ax1.set_ylabel(f"energy (eV; potential and total\nrelative to the first total, {e0:.2f} eV)")
    ax1.legend(loc="best", fontsize=8)
    ax2.plot(t, [r["temperature_K"] for r in rows], color="tab:red", label="instantaneous")
    ax2.axhline(temperature, color="k", lw=0.8, ls="--", label=f"thermostat {temperature:g} K")
    ax2.set_xlabel("time (ps)")
    ax2.set_ylabel("temperature (K)")
    ax2.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    try:
        from ase import Atoms, units
        from ase.io import write
        from ase.md.langevin import Langevin
        from ase.md import velocitydistribution as velocities
        from ase.md.velocitydistribution import Stationary, ZeroRotation
    except ImportError:
        sys.exit("this example needs ASE: pip install 'georecon_jax[ase]' (or pip install ase)")
    from tqdm import tqdm

    # ASE 3.29 renamed MaxwellBoltzmannDistribution (same arguments)
    thermalize = getattr(velocities, "thermalize_momenta", None) or velocities.MaxwellBoltzmannDistribution

    from georecon_jax.data.md17 import read_force_file
    from georecon_jax.interop.ase_calculator import GeoReconCalculator

    if not os.path.exists(args.model):
        sys.exit(f"{args.model}: no such model; fine-tune one first (see the top of {__file__})")
    frames, _ = read_force_file(args.data)
    atoms = Atoms(numbers=frames.atomic_numbers, positions=frames.positions[args.frame])
    calc = GeoReconCalculator(args.model)
    atoms.calc = calc
    rng = np.random.default_rng(args.seed)
    thermalize(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = Langevin(
        atoms,
        args.timestep * units.fs,
        temperature_K=args.temperature,
        friction=args.friction / units.fs,
        fixcm=False,
        rng=rng,
    )
    os.makedirs(args.out, exist_ok=True)
    xyz = os.path.join(args.out, "md_aspirin.xyz")
    if os.path.exists(xyz):
        os.remove(xyz)
    rows = []

    def record():
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        d = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
        rows.append(
            {
                "step": dynamics.nsteps,
                "time_ps": dynamics.nsteps * args.timestep / 1000.0,
                "potential_eV": epot,
                "kinetic_eV": ekin,
                "total_eV": epot + ekin,
                "temperature_K": atoms.get_temperature(),
                "min_distance_A": float(d.min()),
            }
        )
        write(xyz, atoms, format="extxyz", append=True)

    print(
        f"{calc.model}; {len(atoms)} atoms, {args.steps} steps of {args.timestep} fs at {args.temperature} K"
    )
    t0 = time.time()
    record()
    bar = tqdm(total=args.steps, desc="Langevin", unit="step")
    for _ in range(args.steps // args.every):
        dynamics.run(args.every)
        record()
        bar.update(args.every)
        bar.set_postfix(T=f"{rows[-1]['temperature_K']:.0f} K", Epot=f"{rows[-1]['potential_eV']:.3f} eV")
    bar.close()
    wall = time.time() - t0

    with open(os.path.join(args.out, "md_aspirin.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    png = os.path.join(args.out, "md_aspirin.png")
    plot(
        rows,
        png,
        args.temperature,
        f"aspirin, Langevin {args.temperature:g} K, {os.path.basename(os.path.abspath(args.model))}",
    )
    half = rows[len(rows) // 2 :]
    print(
        f"{dynamics.nsteps} steps ({dynamics.nsteps * args.timestep / 1000:.2f} ps) in {wall:.1f} s "
        f"({wall / max(dynamics.nsteps, 1) * 1000:.1f} ms/step); second half: temperature "
        f"{np.mean([r['temperature_K'] for r in half]):.0f} ± {np.std([r['temperature_K'] for r in half]):.0f} K, "
        f"potential energy {np.mean([r['potential_eV'] for r in half]):.3f} eV; shortest distance "
        f"{min(r['min_distance_A'] for r in rows):.2f} Å -> {png}"
    )


if __name__ == "__main__":
    main()
