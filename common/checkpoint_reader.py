"""Reading a checkpoint without a Checkpointer: which step a path names, its meta (the
model's identity), and its parameters restored straight onto any partitioner's shardings,
in full (inference, conversion) or in part (fine-tuning a pretrained body with a new head)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def short_error(e: BaseException) -> str:
  """An exception as one line of at most 300 characters, for error messages."""
  return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def meta_at(root: str, step: int) -> dict:
  """Checkpoint `step`'s meta item; a damaged one is a one-line error naming the file."""
  path = os.path.join(root, str(step), "meta", "metadata")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"checkpoint meta {path} is unreadable ({short_error(e)})") from None


def resolve_checkpoint(path: str) -> tuple[str, int]:
  """A work dir, a checkpoint root, or a step dir -> (root, step); clear error if none."""
  path = os.path.abspath(path)
  for root in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(root):
      steps = ocp.utils.checkpoint_steps(root)
      if steps:
        return root, max(steps)
  parent, name = os.path.split(path)
  if name.isdigit() and os.path.isdir(os.path.join(path, "params")):
    return parent, int(name)
  raise FileNotFoundError(f"no complete checkpoint found at {path}")


def _flat(tree: Any) -> dict[tuple, Any]:
  return {tuple(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_params(path: str, abstract_params: Any, shardings: Any, *, strict: bool = True
                ) -> tuple[Any, int, dict, list[str]]:
  """Params only (fine-tuning, inference), restored straight into `shardings`.

  strict: the checkpoint must hold exactly the model's parameters. Otherwise (fine-tuning a
  pretrained body with a new head) parameters present in both are loaded, checkpoint-only ones
  (e.g. the MLM head) are skipped unread, and model-only ones are returned as `missing` for the
  caller to initialise. A parameter in both with different shapes is always an error.
  Returns (params (None where missing), step, meta, missing).
  """
  root, step = resolve_checkpoint(path)
  step_dir = os.path.join(root, str(step))
  disk_tree = ocp.StandardCheckpointer().metadata(
      os.path.join(step_dir, "params")).item_metadata.tree
  on_disk = _flat(disk_tree)
  wanted = _flat(abstract_params)
  target_shardings = _flat(shardings)
  missing = sorted("/".join(k) for k in wanted.keys() - on_disk.keys())
  extra = sorted("/".join(k) for k in on_disk.keys() - wanted.keys())
  if strict and (missing or extra):
    raise ValueError(f"checkpoint {step_dir} does not match this model: missing "
                     f"{missing[:5]}, unexpected {extra[:5]}")
  for k in wanted.keys() & on_disk.keys():
    if tuple(on_disk[k].shape) != tuple(wanted[k].shape):
      raise ValueError(f"checkpoint {step_dir} tensor {'/'.join(k)} has shape "
                       f"{tuple(on_disk[k].shape)}, this model needs {tuple(wanted[k].shape)}")
  if not wanted.keys() & on_disk.keys():
    raise ValueError(f"checkpoint {step_dir} shares no parameter with this model (another "
                     "architecture?)")

  # Restore in the checkpoint's own tree structure; leaves this model does not use stay unread.
  def target_leaf(p, meta):
    key = tuple(str(getattr(k, "key", k)) for k in p)
    if key not in wanted:
      return ocp.PLACEHOLDER
    return jax.ShapeDtypeStruct(meta.shape, wanted[key].dtype, sharding=target_shardings[key])
  target = jax.tree_util.tree_map_with_path(target_leaf, disk_tree)
  with ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True)) as mgr:
    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    restored = mgr.restore(step, args=ocp.args.Composite(params=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))))["params"]
  got = _flat(restored)
  leaves = [got.get(k) for k in _flat(abstract_params)]
  params = jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)
  return params, step, meta, missing


def read_meta(path: str) -> dict:
  """The meta item ({identity, step}) of the checkpoint at `path` (see resolve_checkpoint)."""
  return meta_at(*resolve_checkpoint(path))
