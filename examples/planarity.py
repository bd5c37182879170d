"""Is an arm's HOMO cost concentrated on planar molecules? Paired per-molecule test errors of two
arms of a study, binned by how planar each test molecule is (issue 32 item 6: the whitened vector
norm amplifies the out-of-plane component of a planar molecule's vectors by 1/√(2 eps)).

  python examples/planarity.py --cells=results/study_recipe/cells/finetune/homo \\
      --pairs=scratch:recipe_vec_norm_none,scratch:recipe_vec_norm_whitened_reference

For each pair A:B, the seeds both arms finished and the test molecules both have: per molecule, the
mean over seeds of |error A| - |error B| (meV), binned by the molecule's out-of-plane thickness
(the square root of the smallest eigenvalue of its atoms' position covariance, Å: 0 for a planar
molecule), and the rank correlation of thickness with that difference. Prints Markdown tables.
Reads the cells' errors_test.npz (rows of QM9 in this codebase's cache) and the embedded QM9.
"""

import argparse
import glob
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

EDGES = (0.0, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, np.inf)


def arm_errors(cells: str, arm: str) -> dict:
    """{seed folder: {QM9 row: absolute error}} of one arm's finished cells."""
    out = {}
    for path in sorted(glob.glob(os.path.join(cells, arm, "seed*", "errors_test.npz"))):
        d = np.load(path)
        out[os.path.basename(os.path.dirname(path))] = dict(zip(d["ids"].tolist(), d["abs_error"].tolist()))
    return out


def thickness(mols, rows) -> np.ndarray:
    """[len(rows)] out-of-plane rms of each molecule's atoms (Å)."""
    out = np.empty(len(rows))
    for k, row in enumerate(rows):
        x = np.asarray(mols.molecule(row)[1], np.float64)
        x = x - x.mean(axis=0)
        out[k] = np.sqrt(max(np.linalg.eigvalsh(x.T @ x / len(x))[0], 0.0))
    return out


def rank_correlation(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(mols, cells: str, a: str, b: str) -> dict:
    """The binned table of arm a minus arm b (see the module doc); None when they share no seed."""
    ea, eb = arm_errors(cells, a), arm_errors(cells, b)
    seeds = sorted(set(ea) & set(eb))
    if not seeds:
        return None
    rows = sorted(set.intersection(*[set(ea[s]) & set(eb[s]) for s in seeds]))
    mae_a = np.array([np.mean([ea[s][r] for s in seeds]) for r in rows])
    mae_b = np.array([np.mean([eb[s][r] for s in seeds]) for r in rows])
    th = thickness(mols, rows)
    bins = []
    for lo, hi in zip(EDGES[:-1], EDGES[1:]):
        m = (th >= lo) & (th < hi)
        if m.any():
            bins.append(
                dict(
                    lo=lo,
                    hi=hi,
                    n=int(m.sum()),
                    diff=float((mae_a - mae_b)[m].mean()),
                    a=float(mae_a[m].mean()),
                    b=float(mae_b[m].mean()),
                )
            )
    return dict(
        a=a,
        b=b,
        seeds=seeds,
        molecules=len(rows),
        diff=float((mae_a - mae_b).mean()),
        bins=bins,
        rank_correlation=rank_correlation(th, mae_a - mae_b),
    )


def markdown(r: dict) -> str:
    lines = [
        f"{r['a']} − {r['b']}: {len(r['seeds'])} seeds, {r['molecules']} test molecules, mean "
        f"{r['diff']:+.1f} meV; rank correlation of thickness with the difference {r['rank_correlation']:+.3f}",
        "",
        f"| out-of-plane rms (Å) | molecules | MAE {r['a']} (meV) | MAE {r['b']} (meV) | difference (meV) | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for x in r["bins"]:
        hi = "∞" if np.isinf(x["hi"]) else f"{x['hi']:g}"
        lines.append(
            f"| {x['lo']:g}–{hi} | {x['n']} | {x['a']:.1f} | {x['b']:.1f} | {x['diff']:+.1f} | {x['a'] / x['b']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="results/study_recipe/cells/finetune/homo")
    p.add_argument(
        "--pairs", default="scratch:recipe_vec_norm_none,scratch:recipe_vec_norm_whitened_reference"
    )
    p.add_argument("--limit", type=int, default=None, help="QM9's first molecules only (tests)")
    a = p.parse_args(argv)
    from georecon_jax.data.qm9 import load_qm9

    mols, _ = load_qm9(limit=a.limit, verbose=False)
    out = []
    for pair in a.pairs.split(","):
        arm_a, arm_b = pair.split(":")
        r = compare(mols, a.cells, arm_a, arm_b)
        if r is None:
            print(f"{arm_a} and {arm_b}: no seed finished in both under {a.cells}")
            continue
        print(markdown(r) + "\n")
        out.append(r)
    return out


if __name__ == "__main__":
    main()
