"""Pretrained-weight transfer: subtrees of a checkpoint's parameters copied into a model's, under one
validation policy; no chemistry here.

  * The checkpoint is read with `restore_params` (a workdir, its ``checkpoints`` folder or one step
    folder); its EMA parameters are used when it kept them, its parameters otherwise.
  * Each mapping names a source subtree of the checkpoint's variables and a target subtree of the
    model's (paths such as ``"params/encoder"``). A required mapping must exist on both sides with
    the same leaves, each of the same shape; an optional one loads only when it matches exactly and
    is skipped otherwise.
  * Named sections of the pretraining run's ``config.json`` (in the checkpoint path or up to three
    folders above it), when there is one, must agree with this run's settings; each caller says
    which (`ConfigCheck`).
  * Every problem is reported at once, in one `PretrainedMismatchError` (the first 8 differing
    parameters, then how many more, and every differing setting).
  * Loaded leaves are cast to the dtypes of the model's parameters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from georecon_jax.training.checkpoint import restore_params

log = logging.getLogger(__name__)

MAX_SHOWN = 8


class PretrainedMismatchError(ValueError):
    """A pretrained checkpoint that does not fit the model or the run's configuration."""


@dataclasses.dataclass(frozen=True)
class ConfigCheck:
    """Settings of this run that must equal the pretraining run's.

    Attributes:
      section: a dotted path into the checkpoint's ``config.json``, e.g. ``"model.encoder"``.
      values: this run's settings (anything with ``.get``: a ConfigDict or a dict).
      keys: the keys to compare; None compares every key the checkpoint's section holds. A listed
        key that the checkpoint's config lacks counts as None.
      hint: said after the differences, when there are any.
      free: keys that may differ (settings that change the function but not the parameters, e.g.
        the encoder's ``vector_cutoff``: a pretrained encoder transfers to either).
    """

    section: str
    values: Any
    keys: Optional[Sequence[str]] = None
    hint: str = ""
    free: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class PretrainedCheckpoint:
    """One read checkpoint: read it once with `read_pretrained`, transfer from it many times."""

    path: str  # absolute
    step: int
    variables: Any  # the parameter tree ({"params": ...}): its EMA copy when it kept one
    ema: bool
    config: Optional[dict]  # the pretraining run's config.json, when there is one


def run_file(path: str, name: str = "config.json", levels: int = 4) -> Optional[str]:
    """The path of the file ``name`` of the run that holds ``path`` (in ``path`` itself or up to
    ``levels - 1`` folders above it: a workdir, its checkpoints/ or one step), if there is one."""
    p = os.path.abspath(path)
    for _ in range(levels):
        if os.path.isfile(os.path.join(p, name)):
            return os.path.join(p, name)
        p = os.path.dirname(p)
    return None


def run_config(path: str, levels: int = 4) -> Optional[dict]:
    """The ``config.json`` of the run that holds ``path`` (see `run_file`), if there is one."""
    found = run_file(path, "config.json", levels)
    if found is None:
        return None
    with open(found) as f:
        return json.load(f)


def read_pretrained(path: str) -> PretrainedCheckpoint:
    """The parameters of the checkpoint at ``path`` (EMA ones when kept) and its run's config."""
    step, raw = restore_params(path)
    ema = raw.get("ema_params") if isinstance(raw, Mapping) else None
    variables = ema or (raw.get("params", raw) if isinstance(raw, Mapping) else raw)
    if not (isinstance(variables, Mapping) and "params" in variables):
        variables = {"params": variables}  # a bare parameter tree
    return PretrainedCheckpoint(os.path.abspath(path), int(step), variables, bool(ema), run_config(path))


def config_mismatches(
    pretrained: PretrainedCheckpoint, checks: Sequence[ConfigCheck]
) -> Tuple[List[str], List[str]]:
    """('section.key: pretrained x, model y' for every differing setting, the hints of the failing checks)."""
    if pretrained.config is None:
        return [], []
    diffs, hints = [], []
    for check in checks:
        theirs: Any = pretrained.config
        for part in check.section.split("."):
            theirs = theirs.get(part, {}) if isinstance(theirs, Mapping) else {}
        # a field added after the checkpoint was saved compares as the behaviour it had
        # (loop.ADDED_FIELDS: e.g. a 3DMRL pretraining without model.relational.architecture
        # used the edge-MLP + GRU form)
        from georecon_jax.training.loop import ADDED_FIELDS

        added = {
            name[len(check.section) + 1 :]: value
            for name, value in ADDED_FIELDS.items()
            if name.startswith(check.section + ".") and "." not in name[len(check.section) + 1 :]
        }
        theirs = {**{k: v for k, v in added.items() if k in check.values}, **dict(theirs)}
        keys = sorted(theirs) if check.keys is None else list(check.keys)
        found = [
            f"{check.section}.{k}: pretrained {theirs.get(k)!r}, model {check.values.get(k)!r}"
            for k in keys
            if k not in check.free and check.values.get(k) != theirs.get(k)
        ]
        diffs += found
        if found and check.hint:
            hints.append(check.hint)
    return diffs, hints


def _config_message(diffs: List[str], hints: List[str]) -> str:
    return "; ".join(diffs) + "".join(f" ({h})" for h in hints)


def check_config(pretrained: PretrainedCheckpoint, checks: Sequence[ConfigCheck]) -> None:
    """Raises PretrainedMismatchError naming every setting that differs from the pretraining's."""
    diffs, hints = config_mismatches(pretrained, checks)
    if diffs:
        raise PretrainedMismatchError(
            f"the checkpoint in {pretrained.path} was configured differently: "
            + _config_message(diffs, hints)
        )


# ---------------------------------------------------------------------------------------------
# Trees.


def _key(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _flat(tree) -> Dict[str, Any]:
    return {_key(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _get(tree, path: str):
    """(subtree or None, the keys of the deepest level reached)."""
    for part in path.split("/"):
        if not isinstance(tree, Mapping) or part not in tree:
            return None, sorted(tree) if isinstance(tree, Mapping) else []
        tree = tree[part]
    return tree, []


def _replace(tree, parts: Sequence[str], value):
    if not parts:
        return value
    out = dict(tree)
    out[parts[0]] = _replace(tree[parts[0]], parts[1:], value)
    return out


def _shape_problems(theirs: Dict[str, Any], ours: Dict[str, Any]) -> List[str]:
    common = sorted(set(ours) & set(theirs), key=lambda k: (k.count("/"), k))
    problems = [
        f"{k}: checkpoint {tuple(jnp.shape(theirs[k]))}, model {tuple(jnp.shape(ours[k]))}"
        for k in common
        if tuple(jnp.shape(theirs[k])) != tuple(jnp.shape(ours[k]))
    ]
    problems += [f"{k}: in the model, not in the checkpoint" for k in sorted(set(ours) - set(theirs))]
    problems += [f"{k}: in the checkpoint, not in the model" for k in sorted(set(theirs) - set(ours))]
    return problems


def _name(target: str) -> str:
    return target[len("params/") :] if target.startswith("params/") else target


# ---------------------------------------------------------------------------------------------
# The transfer.

SubtreeMapping = Union[Tuple[str, str], Tuple[str, str, bool]]


def transfer_subtrees(
    params,
    source: Union[str, PretrainedCheckpoint],
    mappings: Sequence[SubtreeMapping],
    config_checks: Sequence[ConfigCheck] = (),
    describe: Optional[Callable[[Dict[str, Any]], str]] = None,
    hint: str = "",
    verbose: bool = False,
):
    """``params`` with subtrees replaced by a pretrained checkpoint's.

    Args:
      params: the model's parameter tree (e.g. ``{"params": {...}}`` from ``model.init``); not changed.
      source: a checkpoint path (see `restore_params`) or a `PretrainedCheckpoint` already read.
      mappings: ``(source_path, target_path[, required=True])``, ``/``-separated paths into the
        checkpoint's variables and into ``params``.
      config_checks: the settings that must agree with the checkpoint run's ``config.json``.
      describe: flat ``{"a/b": leaf}`` of one subtree -> a one-line summary (e.g. its widths),
        shown for each side of a mismatching subtree.
      hint: the last line of a mismatch error (what to change).

    Returns:
      (new params, {"path", "step", "loaded": the loaded target paths without a leading "params/"}).

    Raises:
      PretrainedMismatchError naming every mismatch of a required subtree and every differing setting.
    """
    pre = source if isinstance(source, PretrainedCheckpoint) else read_pretrained(source)
    new = jax.tree_util.tree_map(lambda x: x, params)
    failures, loaded = [], []
    for m in mappings:
        src_path, tgt_path, required = (tuple(m) + (True,))[:3]
        target, _ = _get(params, tgt_path)
        if target is None:
            if required:
                raise PretrainedMismatchError(f"this model has no '{tgt_path}' parameters to load into")
            continue
        src, keys_there = _get(pre.variables, src_path)
        if src is None:
            if required:
                failures.append(
                    (
                        src_path,
                        tgt_path,
                        None,
                        None,
                        [f"the checkpoint holds no '{src_path}' subtree (next to it: {keys_there})"],
                    )
                )
            continue
        theirs, ours = _flat(src), _flat(target)
        problems = _shape_problems(theirs, ours)
        if problems:
            if required:
                failures.append((src_path, tgt_path, theirs, ours, problems))
            continue
        new = _replace(
            new,
            tgt_path.split("/"),
            jax.tree_util.tree_map_with_path(lambda p, ref: jnp.asarray(theirs[_key(p)], ref.dtype), target),
        )
        loaded.append(_name(tgt_path))
    diffs, hints = config_mismatches(pre, config_checks)
    if failures or diffs:
        lines = [f"the pretrained weights in {pre.path} (step {pre.step}) do not match this model:"]
        total = sum(len(f[-1]) for f in failures)
        budget = MAX_SHOWN
        for src_path, tgt_path, theirs, ours, problems in failures:
            lines.append(f"  checkpoint '{src_path}' -> model '{tgt_path}':")
            if describe is not None and theirs is not None:
                lines += [f"    checkpoint: {describe(theirs)}", f"    this model: {describe(ours)}"]
            lines += [f"    {p}" for p in problems[:budget]]
            budget -= len(problems[:budget])
        if total > MAX_SHOWN:
            lines.append(f"  (+{total - MAX_SHOWN} more)")
        if diffs:
            lines.append("  configured differently: " + _config_message(diffs, hints))
        if hint:
            lines.append(hint)
        raise PretrainedMismatchError("\n".join(lines))
    if verbose:
        log.info(
            "loaded %s from %s (pretraining step %d%s)",
            ", ".join(loaded),
            pre.path,
            pre.step,
            ", EMA weights" if pre.ema else "",
        )
    return new, {"path": pre.path, "step": pre.step, "loaded": loaded}


# ---------------------------------------------------------------------------------------------
# The library's transfers: which subtrees, and which settings must agree.


def describe_encoder(flat: Dict[str, Any]) -> str:
    """Widths of an encoder subtree from its parameter names and shapes (for mismatch errors)."""
    emb = flat.get("embedding/embedding")
    layers = len({k.split("/")[0] for k in flat if k.startswith("attention_")})
    return (
        f"features={emb.shape[1] if emb is not None else '?'}, num_layers={layers}, "
        f"num_rbf={flat['rbf/means'].shape[0] if 'rbf/means' in flat else '?'}"
    )


# The node-noise head carries over when both sides have it with the same shapes: a pretraining
# model's ``heads_node_noise`` into a property model's ``node_noise`` (Coord's fine-tuning
# regulariser starts from the pretrained head).
NODE_NOISE_HEADS = (("params/heads_node_noise", "params/node_noise", False),)


# Encoder settings a fine-tuning may choose freely: the same parameters under another function.
# vector_cutoff: torchmd-net's ET-MD17 fine-tunes with it, pre-training-via-denoising pretrains
# without it (issue 35).
ENCODER_FREE = ("vector_cutoff",)


def load_pretrained_encoder(params, path: str, encoder_cfg, verbose: bool = True):
    """Fine-tuning: ``params`` with ``encoder`` (and a matching node-noise head) replaced by a
    pretraining checkpoint's (its EMA parameters when it kept them); every setting of the
    pretraining config's ``model.encoder`` must equal ``encoder_cfg``'s, but `ENCODER_FREE`.

    Returns (params, {"path", "step", "loaded"}); raises PretrainedMismatchError.
    """
    return transfer_subtrees(
        params,
        path,
        (("params/encoder", "params/encoder", True),) + NODE_NOISE_HEADS,
        config_checks=[ConfigCheck("model.encoder", encoder_cfg, free=ENCODER_FREE)],
        describe=describe_encoder,
        hint="Set --config.model.encoder.* to the pretraining values.",
        verbose=verbose,
    )


def load_3d_encoder(params, path: str, name: str, verbose: bool = True):
    """3DMRL: a pretraining checkpoint's ET encoder (``params/encoder``) copied into the 3D teacher
    (``params/encoder3d/encoder``); returns the new params."""
    if name != "et":
        raise ValueError("model.encoder3d.init_from needs model.encoder3d.name = 'et'")
    params, _ = transfer_subtrees(
        params,
        path,
        [("params/encoder", "params/encoder3d/encoder", True)],
        describe=describe_encoder,
        hint="model.encoder3d must match the checkpoint's encoder (layers, features, "
        "heads, num_rbf, trainable_rbf and max_z must agree)",
        verbose=verbose,
    )
    return params
