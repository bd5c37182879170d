"""torchmd-net checkpoints as this library's parameters: the equivariant transformer, its output
heads, the Atomref prior, the target standardisation and Coord's noise statistics.

Two formats are read (`read_torchmd`), both Lightning ``.ckpt`` files ({"state_dict",
"hyper_parameters", ...}) or a plain state dict with its hyper-parameters given separately:

  torchmd-net 3.x (github.com/torchmd/torchmd-net, ``torchmdnet/models/model.py``): ``TorchMD_Net``
      with ``representation_model`` (``TorchMD_ET``), ``output_model``, ``prior_model.<i>``, ``mean``,
      ``std``; gated blocks' ``update_net.layers.<k>``.
  pre-training-via-denoising ("pvd", github.com/shehzaidi/pre-training-via-denoising, Zaidi et al.,
      the Coord method): torchmd-net 0.x with ``representation_model.out_norm_vec.weight`` (the
      whitened vector norm, ``layernorm_on_vec='whitened'``), the noise head ``output_model_noise``
      (``EquivariantVectorOutput``) and ``pos_normalizer`` (``AccumulatedNormalization``: acc_sum,
      acc_squared_sum, acc_count); ``update_net.<k>``, one ``prior_model``.

What the JAX model cannot represent is refused with a `TorchmdImportError` naming the field or
the key: another architecture than ``equivariant-transformer``, ``distance_influence`` other than
'both', activations other than SiLU, ``rbf_type`` other than 'expnorm', no neighbour embedding,
``cutoff_lower`` != 0, periodic boxes, an atom filter, a reduction other than a
sum, an output model other than (Equivariant)Scalar, a prior other than Atomref (or a disabled
one), and any state-dict key this mapping does not consume.

The mapping (torch ``Linear.weight`` is [out, in]; flax ``Dense.kernel`` is [in, out]):

  representation_model.embedding.weight [max_z, F]    encoder/embedding/embedding [max_z + 1, F]
                                                      (row max_z, Z = max_z, is zero: torch has none)
  .distance_expansion.{means,betas}                   encoder/rbf/{means,betas} when trainable;
                                                      else checked equal to the basis JAX computes
  .neighbor_embedding.{embedding,distance_proj,combine}  encoder/neighbor_embedding/...
  .attention_layers.<i>.{layernorm,q_proj,k_proj,v_proj,o_proj,vec_proj,dk_proj,dv_proj}
                                                      encoder/attention_<i>/... (LayerNorm weight ->
                                                      scale)
  .out_norm, .out_norm_vec.weight                     encoder/out_norm, encoder/out_norm_vec/weight
  output_model.output_network.<b>.{vec1_proj,vec2_proj,update_net.<0,2>}  (EquivariantScalar)
                                                      readout/head/block_<b>/{vec1_proj,vec2_proj,
                                                      update_0,update_1}
  output_model.output_network.<0,2> (Scalar MLP)      readout/head/{hidden,out}
  output_model_noise.output_network.<b>...            node_noise/block_<b>/... (pretraining:
                                                      heads_node_noise)
  prior_model[.0].atomref.weight [Z, 1]               per-element references (target_stats.json)
  mean, std                                           target statistics (target_stats.json)
  pos_normalizer.{acc_sum,acc_squared_sum,acc_count}  noise_normaliser.json (mean, std in Å)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from georecon_jax.interop.torch_checkpoint import TorchCheckpointError, load_torch_file, plain

log = logging.getLogger(__name__)

FORMAT_3X = "torchmd-net 3.x"
FORMAT_PVD = "pre-training-via-denoising"

# torchmd-net's QM9 labels (torch_geometric's qm9_target_dict) -> this library's QM9 targets. Both
# use torch_geometric's units (eV for energies, D, a0^3, a0^2, cal/(mol K)).
QM9_LABELS = {
    "dipole_moment": "mu",
    "isotropic_polarizability": "alpha",
    "homo": "homo",
    "lumo": "lumo",
    "gap": "gap",
    "electronic_spatial_extent": "r2",
    "zpve": "zpve",
    "energy_U0": "U0",
    "energy_U": "U",
    "enthalpy_H": "H",
    "free_energy": "G",
    "heat_capacity": "cv",
}
MD17_DATASETS = ("MD17", "rMD17")

# Hyper-parameters the architecture depends on, with the only value (or values) the JAX model has.
# None in the checkpoint counts as the default stated second.
_FIXED = {
    "model": (("equivariant-transformer",), "equivariant-transformer"),
    "distance_influence": (("both",), "both"),
    "activation": (("silu",), "silu"),
    "attn_activation": (("silu",), "silu"),
    "rbf_type": (("expnorm",), "expnorm"),
    "neighbor_embedding": ((True,), True),
    "reduce_op": (("add", "sum"), "add"),
    "box_vecs": ((None,), None),
    "atom_filter": ((-1,), -1),
    "layernorm_on_vec": ((None, "whitened"), None),
    "charge": ((False,), False),
    "spin": ((False,), False),
}
_WHY = {
    "model": "the JAX encoder is torchmd-net's equivariant transformer only",
    "distance_influence": "the JAX attention filters both keys and values by distance",
    "activation": "the JAX model uses SiLU",
    "attn_activation": "the JAX attention uses SiLU",
    "rbf_type": "the JAX radial basis is exp-normal",
    "neighbor_embedding": "the JAX encoder always has the neighbour embedding",
    "reduce_op": "the JAX readouts sum over atoms",
    "box_vecs": "the JAX model has no periodic boundaries",
    "atom_filter": "the JAX model has no atom filter",
    "layernorm_on_vec": "the JAX vector norm is the whitened one",
    "charge": "the JAX model takes no total charge",
    "spin": "the JAX model takes no spin",
}
_REQUIRED = ("embedding_dimension", "num_layers", "num_heads", "num_rbf", "cutoff_upper", "max_z")
VEC_NORM_CHOICES = ("whitened_reference", "whitened")


class TorchmdImportError(ValueError):
    """A torchmd-net checkpoint (or a part of it) that the JAX model cannot represent."""


@dataclasses.dataclass
class TorchmdModel:
    """A torchmd-net checkpoint in this library's terms (see the module doc).

    Attributes:
      params: {"encoder": ..., "readout": {"head": ...} (when it has an output model), "node_noise":
        ... (when it has a noise head)}: numpy float32 trees in flax's layout.
      encoder: the ``model.encoder`` settings (num_layers, features, num_heads, num_rbf, cutoff,
        max_z, trainable_rbf, vec_norm, vector_cutoff).
      head: 'equivariant_scalar' | 'mlp' | None.
      atomref: [Z] float64 per-element references of the Atomref prior (None without one).
      mean, std: the standardisation (0 and 1 without one).
      noise_mean, noise_std: the pretraining noise statistics (Å, 3 each) from ``pos_normalizer``.
      task, target, molecule: what it was trained on, from ``dataset``/``dataset_arg`` (None when
        that is not QM9 or MD17).
      notes: where the JAX model departs from the checkpoint's (said in the log and imported.json).
    """

    source: str
    format: str
    hparams: Dict[str, Any]
    step: int
    encoder: Dict[str, Any]
    head: Optional[str]
    params: Dict[str, Any]
    atomref: Optional[np.ndarray] = None
    mean: float = 0.0
    std: float = 1.0
    noise_mean: Optional[Tuple[float, float, float]] = None
    noise_std: Optional[Tuple[float, float, float]] = None
    noise_scale: Optional[float] = None  # position_noise_scale (Å)
    task: Optional[str] = None
    target: Optional[str] = None
    molecule: Optional[str] = None
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def has_noise_head(self) -> bool:
        return "node_noise" in self.params

    def provenance(self) -> dict:
        """What ``imported.json`` records: the file, its format and hyper-parameters, the notes."""
        hp = {k: v for k, v in self.hparams.items() if _jsonable(v)}
        return {
            "source": self.source,
            "format": self.format,
            "step": self.step,
            "task": self.task,
            "target": self.target,
            "molecule": self.molecule,
            "head": self.head,
            "noise_head": self.has_noise_head,
            "atomref_prior": self.atomref is not None,
            "mean": self.mean,
            "std": self.std,
            "notes": self.notes,
            "hyper_parameters": hp,
        }


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Reading.


def read_hparams_file(path: str) -> dict:
    """Hyper-parameters from a YAML (Lightning's hparams.yaml, torchmd-net's input.yaml) or JSON file."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        out = json.loads(text)
    else:
        import yaml

        out = yaml.safe_load(text)
    if not isinstance(out, dict):
        raise TorchmdImportError(f"{path}: the hyper-parameters are not a mapping")
    return out


def read_checkpoint_file(path: str, hparams_path: Optional[str] = None):
    """(state dict without Lightning's ``model.`` prefix, hyper-parameters, step) of a file."""
    try:
        obj = load_torch_file(path)
    except TorchCheckpointError as e:
        raise TorchmdImportError(str(e)) from e
    except OSError as e:
        raise TorchmdImportError(f"{path}: {e}") from e
    step = 0
    if isinstance(obj, dict) and "state_dict" in obj:
        state_dict, hparams = obj["state_dict"], plain(obj.get("hyper_parameters") or {})
        step = int(obj.get("global_step") or 0)
    elif isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        state_dict, hparams = obj, {}
    else:
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {sorted(obj)[:8]}"
        raise TorchmdImportError(f"{path}: holds {kind}, neither a Lightning checkpoint nor a state dict")
    if hparams_path:
        hparams = {**hparams, **read_hparams_file(hparams_path)}
    if not hparams:
        raise TorchmdImportError(
            f"{path}: the file holds no hyper-parameters: pass them with "
            "--hparams=FILE (the run's hparams.yaml or its input YAML)"
        )
    state_dict = {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in state_dict.items()}
    for k, v in state_dict.items():
        if not isinstance(v, np.ndarray):
            raise TorchmdImportError(f"{path}: state dict entry {k} is a {type(v).__name__}, not a tensor")
    return state_dict, hparams, step


class _StateDict:
    """The state dict, consumed key by key: `rest` is what nothing took."""

    def __init__(self, state_dict: Dict[str, np.ndarray]):
        self.sd, self.used = state_dict, set()

    def has(self, key: str) -> bool:
        return key in self.sd

    def take(self, key: str, shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
        if key not in self.sd:
            raise TorchmdImportError(f"the state dict has no {key}")
        value = self.sd[key]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise TorchmdImportError(
                f"{key} has shape {tuple(value.shape)}, expected {tuple(shape)} from the hyper-parameters"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise TorchmdImportError(f"{key} has dtype {value.dtype}, not a float")
        self.used.add(key)
        return value

    def dense(self, prefix: str, n_in: int, n_out: int, bias: bool = True) -> Dict[str, np.ndarray]:
        out = {"kernel": _f32(self.take(f"{prefix}.weight", (n_out, n_in)).T)}
        if bias:
            out["bias"] = _f32(self.take(f"{prefix}.bias", (n_out,)))
        return out

    def layer_norm(self, prefix: str, n: int) -> Dict[str, np.ndarray]:
        return {
            "scale": _f32(self.take(f"{prefix}.weight", (n,))),
            "bias": _f32(self.take(f"{prefix}.bias", (n,))),
        }

    def rest(self) -> List[str]:
        return sorted(set(self.sd) - self.used)


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, np.float32))


def _scalar(sd: _StateDict, key: str, default: float) -> float:
    if not sd.has(key):
        return default
    v = sd.take(key)
    if v.size != 1:
        raise TorchmdImportError(f"{key} has shape {tuple(v.shape)}: one value per output is supported")
    return float(v.reshape(()))


def _padded_embedding(table: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, table.shape[1]), np.float32)
    out[: table.shape[0]] = table
    return out


def expnorm_basis(num_rbf: int, cutoff_lower: float, cutoff_upper: float):
    """The exp-normal basis' initial means and betas, float32, as torchmd-net and the JAX
    `ExpNormalSmearing` compute them."""
    start = np.float32(math.exp(-cutoff_upper + cutoff_lower))
    means = np.linspace(start, 1.0, num_rbf, dtype=np.float32)
    betas = np.full((num_rbf,), (2.0 / num_rbf * (1.0 - start)) ** -2, np.float32)
    return means, betas


def check_hparams(hp: dict) -> None:
    """Raises TorchmdImportError naming every hyper-parameter the JAX model cannot represent."""
    problems = [f"{k} is missing" for k in _REQUIRED if hp.get(k) is None]
    for key, (allowed, default) in _FIXED.items():
        value = hp.get(key, default)
        if value not in allowed:
            problems.append(f"{key}={value!r} ({_WHY[key]}: {' or '.join(repr(a) for a in allowed)})")
    if float(hp.get("cutoff_lower", 0.0) or 0.0) != 0.0:
        problems.append(f"cutoff_lower={hp['cutoff_lower']!r} (the JAX cutoff starts at 0 Å)")
    output = hp.get("output_model", "Scalar")
    if output not in ("Scalar", "EquivariantScalar"):
        problems.append(
            f"output_model={output!r} (the JAX heads read torchmd-net's Scalar/EquivariantScalar only; "
            "dipole and spatial-extent heads differ in units and masses)"
        )
    noise = hp.get("output_model_noise")
    if noise not in (None, "VectorOutput", "EquivariantVectorOutput"):
        problems.append(f"output_model_noise={noise!r} (only VectorOutput, Coord's noise head)")
    problems += _prior_problems(hp)
    if hp.get("embedding_dimension") and hp.get("num_heads") and hp["embedding_dimension"] % hp["num_heads"]:
        problems.append(f"embedding_dimension={hp['embedding_dimension']} is not divisible by num_heads")
    if problems:
        raise TorchmdImportError("the checkpoint's model cannot be represented: " + "; ".join(problems))


def _prior_names(hp: dict) -> List[Tuple[str, dict]]:
    """[(prior name, its arguments)] of ``prior_model`` / ``prior_args`` (torchmd-net's forms)."""
    prior = hp.get("prior_model")
    if not prior:
        return []
    items = prior if isinstance(prior, list) else [prior]
    out = []
    for item in items:
        if isinstance(item, dict):
            out += [(str(k), dict(v or {})) for k, v in item.items()]
        else:
            out.append((str(item), {}))
    args = hp.get("prior_args")
    if args is not None:
        args = args if isinstance(args, list) else [args]
        out = [(name, dict(a or {})) for (name, _), a in zip(out, args + [{}] * len(out))]
    return out


def _prior_problems(hp: dict) -> List[str]:
    priors = _prior_names(hp)
    problems = [
        f"prior_model={name!r} (only Atomref: per-element references)"
        for name, _ in priors
        if name not in ("Atomref", "LearnableAtomref")
    ]
    if len(priors) > 1:
        problems.append(f"prior_model={hp['prior_model']!r} (one Atomref prior at most)")
    for name, args in priors:
        if args.get("enable", True) is False:
            problems.append(
                f"prior_args.enable=False for {name} (the labels had the references removed; the JAX "
                "model's targets are totals)"
            )
    return problems


def _gated_block(sd: _StateDict, prefix: str, hidden: int, out: int, layout: str) -> dict:
    """One GatedEquivariantBlock(hidden -> out) at ``prefix``."""
    net = f"{prefix}.update_net.layers" if layout == FORMAT_3X else f"{prefix}.update_net"
    return {
        "vec1_proj": sd.dense(f"{prefix}.vec1_proj", hidden, hidden, bias=False),
        "vec2_proj": sd.dense(f"{prefix}.vec2_proj", hidden, out, bias=False),
        "update_0": sd.dense(f"{net}.0", 2 * hidden, hidden),
        "update_1": sd.dense(f"{net}.2", hidden, 2 * out),
    }


def _two_gated_blocks(sd: _StateDict, prefix: str, F: int, layout: str) -> dict:
    half = max(F // 2, 1)
    return {
        "block_0": _gated_block(sd, f"{prefix}.output_network.0", F, half, layout),
        "block_1": _gated_block(sd, f"{prefix}.output_network.1", half, 1, layout),
    }


def _layout(sd: _StateDict) -> str:
    """'torchmd-net 3.x' (update_net.layers.<k>, MLP layers.<k>) or 'pre-training-via-denoising'
    (torchmd-net 0.x: update_net.<k>, Sequential <k>), from the keys."""
    keys = sd.sd.keys()
    if any(".update_net.layers." in k or k.startswith("output_model.output_network.layers.") for k in keys):
        return FORMAT_3X
    if any(".update_net.0." in k or k.startswith("output_model.output_network.0.weight") for k in keys):
        return FORMAT_PVD
    return FORMAT_3X if "representation_model.distance.box" in keys else FORMAT_PVD


def convert_encoder(sd: _StateDict, hp: dict, vec_norm: str) -> Tuple[dict, dict]:
    """(encoder parameters, the ``model.encoder`` settings) from ``representation_model.*``."""
    F, L, H = int(hp["embedding_dimension"]), int(hp["num_layers"]), int(hp["num_heads"])
    R, max_z, cutoff = int(hp["num_rbf"]), int(hp["max_z"]), float(hp["cutoff_upper"])
    trainable = bool(hp.get("trainable_rbf", True))
    p = "representation_model"
    enc: Dict[str, Any] = {
        "embedding": {"embedding": _padded_embedding(sd.take(f"{p}.embedding.weight", (max_z, F)), max_z + 1)}
    }
    means, betas = (
        sd.take(f"{p}.distance_expansion.means", (R,)),
        sd.take(f"{p}.distance_expansion.betas", (R,)),
    )
    if trainable:
        enc["rbf"] = {"means": _f32(means), "betas": _f32(betas)}
    else:
        m0, b0 = expnorm_basis(R, 0.0, cutoff)
        for key, theirs, ours in (("means", means, m0), ("betas", betas, b0)):
            if not np.allclose(theirs, ours, rtol=1e-5, atol=1e-6):
                raise TorchmdImportError(
                    f"{p}.distance_expansion.{key} differs from the exp-normal basis for num_rbf={R}, "
                    f"cutoff_upper={cutoff} (trainable_rbf=False: the JAX model computes it)"
                )
    if sd.has(f"{p}.distance.box"):
        box = sd.take(f"{p}.distance.box")
        if np.any(box != 0):
            raise TorchmdImportError(
                f"{p}.distance.box is not zero: the JAX model has no periodic boundaries"
            )
    ne = f"{p}.neighbor_embedding"
    enc["neighbor_embedding"] = {
        "embedding": {
            "embedding": _padded_embedding(sd.take(f"{ne}.embedding.weight", (max_z, F)), max_z + 1)
        },
        "distance_proj": sd.dense(f"{ne}.distance_proj", R, F),
        "combine": sd.dense(f"{ne}.combine", 2 * F, F),
    }
    for i in range(L):
        a = f"{p}.attention_layers.{i}"
        enc[f"attention_{i}"] = {
            "layernorm": sd.layer_norm(f"{a}.layernorm", F),
            "q_proj": sd.dense(f"{a}.q_proj", F, F),
            "k_proj": sd.dense(f"{a}.k_proj", F, F),
            "v_proj": sd.dense(f"{a}.v_proj", F, 3 * F),
            "o_proj": sd.dense(f"{a}.o_proj", F, 3 * F),
            "vec_proj": sd.dense(f"{a}.vec_proj", F, 3 * F, bias=False),
            "dk_proj": sd.dense(f"{a}.dk_proj", R, F),
            "dv_proj": sd.dense(f"{a}.dv_proj", R, 3 * F),
        }
    enc["out_norm"] = sd.layer_norm(f"{p}.out_norm", F)
    whitened = hp.get("layernorm_on_vec") == "whitened"
    if whitened:
        enc["out_norm_vec"] = {"weight": _f32(sd.take(f"{p}.out_norm_vec.weight", (F,)))}
    settings = dict(
        num_layers=L,
        features=F,
        num_heads=H,
        num_rbf=R,
        cutoff=cutoff,
        max_z=max_z,
        trainable_rbf=trainable,
        vec_norm=vec_norm if whitened else "none",
        # torchmd-net 3.x's option (absent in pre-training-via-denoising's ET: False)
        vector_cutoff=_flag(hp, "vector_cutoff"),
    )
    return enc, settings


def _flag(hp: dict, key: str) -> bool:
    """A boolean hyper-parameter (None or absent: False; YAML may give 'true'/'false')."""
    value = hp.get(key)
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise TorchmdImportError(f"{key}={value!r} is not a boolean")
        return value.lower() == "true"
    return bool(value)


def convert_output_model(
    sd: _StateDict, hp: dict, F: int, layout: str
) -> Tuple[Optional[str], Optional[dict]]:
    """(head kind, head parameters) of ``output_model``; (None, None) when it has none."""
    if sd.has("output_model.output_network.0.vec1_proj.weight"):
        return "equivariant_scalar", _two_gated_blocks(sd, "output_model", F, layout)
    mlp = "output_model.output_network.layers" if layout == FORMAT_3X else "output_model.output_network"
    if sd.has(f"{mlp}.0.weight"):
        hidden = max(F // 2, 1)
        return "mlp", {"hidden": sd.dense(f"{mlp}.0", F, hidden), "out": sd.dense(f"{mlp}.2", hidden, 1)}
    if any(k.startswith("output_model.") for k in sd.sd):
        raise TorchmdImportError(
            "output_model: its keys are neither EquivariantScalar's nor Scalar's: "
            + ", ".join(k for k in sorted(sd.sd) if k.startswith("output_model."))[:400]
        )
    return None, None


def convert_atomref(sd: _StateDict, hp: dict) -> Optional[np.ndarray]:
    if not _prior_names(hp):
        return None
    for p in ("prior_model.0", "prior_model"):
        if sd.has(f"{p}.atomref.weight"):
            table = sd.take(f"{p}.atomref.weight")
            if table.ndim != 2 or table.shape[1] != 1:
                raise TorchmdImportError(f"{p}.atomref.weight has shape {table.shape}, expected [Z, 1]")
            if sd.has(f"{p}.initial_atomref"):
                sd.take(f"{p}.initial_atomref")  # the value it started from; the weight is what it uses
            return table[:, 0].astype(np.float64)
    raise TorchmdImportError(
        "prior_model is Atomref but the state dict has no prior_model[.0].atomref.weight"
    )


def convert_normaliser(sd: _StateDict):
    """(mean [3], std [3]) in Å of ``pos_normalizer``, as AccumulatedNormalization computes them
    (float32: mean = Σx / max(n, 1), std = max(sqrt(Σx² / max(n, 1) - mean²), 1e-8)); None when
    there is none or it never accumulated."""
    p = "pos_normalizer"
    if not sd.has(f"{p}.acc_sum"):
        return None
    total = sd.take(f"{p}.acc_sum", (3,)).astype(np.float32)
    squares = sd.take(f"{p}.acc_squared_sum", (3,)).astype(np.float32)
    count = sd.take(f"{p}.acc_count").astype(np.float32).reshape(-1)[:1]
    if sd.has(f"{p}.num_accumulations"):
        sd.take(f"{p}.num_accumulations")
    if float(count[0]) <= 0:
        log.warning("pos_normalizer has never accumulated (acc_count = 0): no noise statistics to carry over")
        return None
    n = np.maximum(count, np.float32(1.0))
    mean = total / n
    std = np.maximum(np.sqrt(squares / n - mean**2), np.float32(1e-8))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def dataset_task(hp: dict):
    """(task, target, molecule) from ``dataset`` / ``dataset_arg``; (None, None, None) for data
    this library does not fine-tune on (PCQM4Mv2, ANI-1, ...)."""
    dataset, arg = hp.get("dataset"), hp.get("dataset_arg")
    if dataset == "QM9":
        label = arg.get("label") if isinstance(arg, dict) else arg
        if label not in QM9_LABELS:
            raise TorchmdImportError(
                f"dataset_arg={arg!r}: not a torchmd-net QM9 label ({sorted(QM9_LABELS)})"
            )
        return "qm9", QM9_LABELS[label], None
    if dataset in MD17_DATASETS:
        molecule = arg.get("molecules") if isinstance(arg, dict) else arg
        return "md17", "energy", (str(molecule) if molecule else None)
    return None, None, None


def read_torchmd(
    path: str, hparams_path: Optional[str] = None, vec_norm: str = "whitened_reference"
) -> TorchmdModel:
    """A torchmd-net 3.x or pre-training-via-denoising checkpoint converted (see the module doc).

    Args:
      path: a Lightning ``.ckpt`` or a ``torch.save``'d state dict (zip format).
      hparams_path: YAML/JSON hyper-parameters (required for a bare state dict; they override the
        file's own otherwise).
      vec_norm: the JAX vector norm for a whitened checkpoint: 'whitened_reference' (the
        reference's eps·diag(1, 2, 3), the same function) or 'whitened' (eps·I, this library's
        equivariant correction; differs where the vectors' covariance is comparable to 1e-5).

    Raises:
      TorchmdImportError naming what cannot be represented.
    """
    if vec_norm not in VEC_NORM_CHOICES:
        raise TorchmdImportError(f"vec_norm={vec_norm!r}: use one of {VEC_NORM_CHOICES}")
    state_dict, hp, step = read_checkpoint_file(path, hparams_path)
    check_hparams(hp)
    sd = _StateDict(state_dict)
    layout = _layout(sd)
    fmt = FORMAT_PVD if any(k in hp for k in ("layernorm_on_vec", "output_model_noise")) else layout
    encoder_params, encoder = convert_encoder(sd, hp, vec_norm)
    F = encoder["features"]
    head, head_params = convert_output_model(sd, hp, F, layout)
    params: Dict[str, Any] = {"encoder": encoder_params}
    if head_params is not None:
        params["readout"] = {"head": head_params}
    if hp.get("output_model_noise") or sd.has("output_model_noise.output_network.0.vec1_proj.weight"):
        params["node_noise"] = _two_gated_blocks(sd, "output_model_noise", F, layout)
    atomref = convert_atomref(sd, hp)
    mean, std = _scalar(sd, "mean", 0.0), _scalar(sd, "std", 1.0)
    normaliser = convert_normaliser(sd)
    rest = sd.rest()
    if rest:
        shown = ", ".join(f"{k} {tuple(state_dict[k].shape)}" for k in rest[:12])
        more = f" (+{len(rest) - 12} more)" if len(rest) > 12 else ""
        raise TorchmdImportError(
            f"the state dict holds {len(rest)} key(s) the JAX model has no place for: {shown}{more}"
        )
    task, target, molecule = dataset_task(hp)
    notes = departures(hp, encoder)
    noise_scale = hp.get("position_noise_scale")
    model = TorchmdModel(
        source=os.path.abspath(path),
        format=fmt,
        hparams=hp,
        step=step,
        encoder=encoder,
        head=head,
        params=params,
        atomref=atomref,
        mean=mean,
        std=std,
        noise_mean=normaliser[0] if normaliser else None,
        noise_std=normaliser[1] if normaliser else None,
        noise_scale=float(noise_scale) if noise_scale else None,
        task=task,
        target=target,
        molecule=molecule,
        notes=notes,
    )
    for note in notes:
        log.info("note: %s", note)
    return model


def departures(hp: dict, encoder: dict) -> List[str]:
    """Where the JAX model computes something else than the checkpoint's own code would."""
    notes = [
        "GatedEquivariantBlock: |W v| is sqrt(|W v|^2 + 1e-8) in JAX (a finite gradient at 0), the exact "
        "norm in torch: relative differences of 1e-8 / |W v|^2"
    ]
    neighbours = hp.get("max_num_neighbors")
    if neighbours:
        notes.append(
            f"max_num_neighbors={neighbours}: the JAX model has no neighbour limit (torchmd-net 3.x stops "
            "with an error beyond it, torchmd-net 0.x (pre-training-via-denoising) drops neighbours beyond "
            "it): molecules with more neighbours within the cutoff differ"
        )
    if encoder["vec_norm"] == "whitened_reference":
        notes.append(
            "whitened vector norm: float32 eigh in JAX, float64 SVD (dropping singular values below "
            "3 x 2.2e-16 of the largest) in the reference; the same eps·diag(1, 2, 3)"
        )
    elif encoder["vec_norm"] == "whitened":
        notes.append(
            "whitened vector norm with eps·I (this library's equivariant correction) instead of the "
            "reference's eps·diag(1, 2, 3): outputs differ where the vectors' covariance is near 1e-5"
        )
    if int(hp.get("precision", 32) or 32) != 32:
        notes.append(f"precision={hp.get('precision')}: weights cast to float32")
    return notes
