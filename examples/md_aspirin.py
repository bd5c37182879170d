"""Short molecular dynamics of aspirin with a model fine-tuned on rMD17 aspirin, through the ASE
calculator: Langevin at a temperature, or NVE (velocity Verlet) reporting the total energy's
drift per ps; plots the energies and the temperature over time.

  # 1. fine-tune on the shared rMD17 aspirin file (2 CPU cores: 5 minutes). The MD17 config has
  #    model.encoder.vector_cutoff=True (torchmd-net's ET-MD17.yaml): energy and forces continuous
  #    where atom pairs cross the 5 Å cutoff, which NVE needs (README, MD section)
  python -m experiments.finetune --config=experiments/configs/finetune_md17.py:quick \\
      --config.molecule=aspirin --config.data.data_dir=../shared/data/rmd17 \\
      --config.num_steps=1500 --workdir=runs/aspirin
  # 2. 1 ps of Langevin dynamics at 300 K from the first test frame (0.5 fs steps)
  python examples/md_aspirin.py --model=runs/aspirin --steps=2000 --out=runs/md_aspirin
  # 3. or NVE from 300 K velocities: prints the drift of the total energy in meV/ps
  python examples/md_aspirin.py --model=runs/aspirin --ensemble=nve --steps=2000 --every=1

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
    p.add_argument("--friction", type=float, default=0.01, help="1/fs (Langevin)")
    p.add_argument(
        "--ensemble",
        choices=("langevin", "nve"),
        default="langevin",
        help="langevin: thermostat at --temperature; nve: velocity Verlet (ASE's VelocityVerlet) "
        "from --temperature velocities, no thermostat, reporting the total energy's drift per ps",
    )
    p.add_argument("--every", type=int, default=10, help="record every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/md_aspirin")
    return p.parse_args(argv)


def energy_drift(rows):
    """The total energy's drift (NVE): the slope of a least-squares line through total_eV over
    time_ps (meV/ps; velocity Verlet's error oscillates at O(dt²), a non-conservative potential
    adds a trend), the net change E(end) - E(0) per ps, and the largest |E(t) - E(0)| (meV)."""
    t = np.array([r["time_ps"] for r in rows])
    e = np.array([r["total_eV"] for r in rows]) - rows[0]["total_eV"]
    span = max(t[-1] - t[0], 1e-12)
    slope = float(np.polyfit(t, e, 1)[0]) if len(rows) > 2 else float(e[-1] / span)
    return {
        "drift_meV_per_ps": 1000.0 * slope,
        "net_meV_per_ps": 1000.0 * float(e[-1]) / span,
        "max_deviation_meV": 1000.0 * float(np.abs(e).max()),
        "duration_ps": float(span),
    }


def plot(rows, path, temperature, title, thermostat=True):
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
    label = f"thermostat {temperature:g} K" if thermostat else f"initial velocities {temperature:g} K"
    ax2.axhline(temperature, color="k", lw=0.8, ls="--", label=label)
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
        from ase.md.verlet import VelocityVerlet
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
    nve = args.ensemble == "nve"
    if nve:
        dynamics = VelocityVerlet(atoms, args.timestep * units.fs)
    else:
        dynamics = Langevin(
            atoms,
            args.timestep * units.fs,
            temperature_K=args.temperature,
            friction=args.friction / units.fs,
            fixcm=False,
            rng=rng,
        )
    name = "NVE" if nve else "Langevin"
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
        f"{calc.model}; {len(atoms)} atoms, {name}: {args.steps} steps of {args.timestep} fs "
        f"{'from' if nve else 'at'} {args.temperature} K"
    )
    t0 = time.time()
    record()
    bar = tqdm(total=args.steps, desc=name, unit="step")
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
        f"aspirin, {name} {args.temperature:g} K, {os.path.basename(os.path.abspath(args.model))}",
        thermostat=not nve,
    )
    half = rows[len(rows) // 2 :]
    print(
        f"{dynamics.nsteps} steps ({dynamics.nsteps * args.timestep / 1000:.2f} ps) in {wall:.1f} s "
        f"({wall / max(dynamics.nsteps, 1) * 1000:.1f} ms/step); second half: temperature "
        f"{np.mean([r['temperature_K'] for r in half]):.0f} ± {np.std([r['temperature_K'] for r in half]):.0f} K, "
        f"potential energy {np.mean([r['potential_eV'] for r in half]):.3f} eV; shortest distance "
        f"{min(r['min_distance_A'] for r in rows):.2f} Å -> {png}"
    )
    summary = {"steps": dynamics.nsteps, "wall_s": wall}
    if nve:
        drift = energy_drift(rows)
        summary.update(drift)
        print(
            f"NVE total energy: drift {drift['drift_meV_per_ps']:+.3f} meV/ps (line fit over "
            f"{drift['duration_ps']:.3f} ps), net {drift['net_meV_per_ps']:+.3f} meV/ps, largest "
            f"|E(t) - E(0)| {drift['max_deviation_meV']:.3f} meV ({len(atoms)} atoms, dt {args.timestep} fs)"
        )
    return summary


if __name__ == "__main__":
    main()
