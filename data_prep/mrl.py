"""Pair data for 3DMRL: where each public source comes from, download (where a network exists),
verify the columns, and embed every molecule once into the conformer cache.

  python -m data_prep.mrl --dest ../shared/data [--download] [--presets combisolv,chchminer] [--workers 2]

Sources (file names as georecon_jax.data.pairs.PRESETS expects them under --dest):
  solvation/{abraham,compsol,freesolv,combisolv}.csv   CGIB-family release (github.com/LiLanQi/GIB_DS and
      Namkyeong/CGIB data/): columns solute,solvent,Gsolv (kcal/mol). Vermeire & Green 2021 (CombiSolv-Exp);
      Grubbs et al. 2010 (Abraham); Moine et al. 2017 (CompSol); Mobley & Guthrie 2014 (FreeSolv).
  solvation/mnsol.csv   MNSol (Marenich et al., U. Minnesota) needs a licence request: not downloaded;
      convert it to solute,solvent,Gsolv yourself.
  chromophore/{absorption,emission,lifetime}.csv   Joung et al., Sci. Data 7, 295 (2020), figshare; the CGIB
      release names the label column Gsolv (nm, or ns for lifetime, ln-transformed by the loader as the reference's np.log).
  ddi/{ChChMiner,ZhangDDI,DeepDDI}_{train,valid,test}.csv   MIRACLE / CMRL / 3DMRL releases
      (github.com/Namkyeong/CMRL, github.com/Namkyeong/3DMRL): drugbank_id_1,drugbank_id_2,smiles_1,smiles_2,label.

Downloads use the raw URLs in SOURCES (the releases' paths as we understand them; unverified here: the
development environment has no network, so check them on first use).
"""

import argparse
import os
import sys
import urllib.request

from georecon_jax.chem.conformers import MoleculeCache
from georecon_jax.data.pairs import PRESETS, default_explicit_h, load_pairs

_CGIB = "https://raw.githubusercontent.com/Namkyeong/CGIB/main/data"
SOURCES = {
    "solvation/abraham.csv": f"{_CGIB}/solvation_free_energy/abraham.csv",
    "solvation/compsol.csv": f"{_CGIB}/solvation_free_energy/compsol.csv",
    "solvation/freesolv.csv": f"{_CGIB}/solvation_free_energy/freesolv.csv",
    "solvation/combisolv.csv": f"{_CGIB}/solvation_free_energy/combisolv.csv",
    "chromophore/absorption.csv": f"{_CGIB}/chromophore/absorption.csv",
    "chromophore/emission.csv": f"{_CGIB}/chromophore/emission.csv",
    "chromophore/lifetime.csv": f"{_CGIB}/chromophore/lifetime.csv",
    **{
        f"ddi/ChChMiner_{s}.csv": f"https://raw.githubusercontent.com/Namkyeong/CMRL/main/data/ChChMiner_{s}.csv"
        for s in ("train", "valid", "test")
    },
    **{
        f"ddi/ZhangDDI_{s}.csv": f"https://raw.githubusercontent.com/Namkyeong/CMRL/main/data/ZhangDDI_{s}.csv"
        for s in ("train", "valid", "test")
    },
}


def download(dest: str):
    for rel, url in SOURCES.items():
        path = os.path.join(dest, rel)
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            urllib.request.urlretrieve(url, path + ".part")
            os.replace(path + ".part", path)
            print(f"downloaded {rel}")
        except Exception as e:  # one missing source must not stop the others
            print(f"could not download {rel} from {url}: {e}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dest", required=True)
    p.add_argument("--download", action="store_true")
    p.add_argument("--presets", default="combisolv,absorption,emission,chchminer")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache_dir", default=None)
    p.add_argument(
        "--hydrogens",
        choices=("reference", "explicit", "implicit"),
        default="reference",
        help="reference: every preset with explicit hydrogens (pretraining) and, where its "
        "fine-tuning differs (absorption, emission, lifetime: implicit), also as fine-tuning reads it",
    )
    a = p.parse_args()
    if a.download:
        download(a.dest)
    for preset in a.presets.split(","):
        if preset not in PRESETS:
            raise SystemExit(f"unknown preset {preset!r}: {sorted(PRESETS)}")
        if a.hydrogens == "reference":  # what pretraining and fine-tuning read (data.explicit_h=None)
            settings = sorted({default_explicit_h(None, True), default_explicit_h(preset)}, reverse=True)
        else:
            settings = [a.hydrogens == "explicit"]
        for h in settings:
            cache = MoleculeCache(a.cache_dir, explicit_h=h)
            try:
                ds = load_pairs(preset, data_root=a.dest, cache=cache, num_workers=a.workers)
            except Exception as e:
                print(f"{preset}: {e}", file=sys.stderr)
                continue
            print(
                f"{preset} (hydrogens {'explicit' if h else 'implicit'}): {len(ds)} pairs, "
                f"{len(ds.molecules)} molecules ({ds.units}); {ds.skip.summary()}"
            )


if __name__ == "__main__":
    main()
