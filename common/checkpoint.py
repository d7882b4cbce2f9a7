"""Orbax checkpoints: async saves, keep-last-N, resume with data position, any-mesh restore, and
nothing lost: a damaged checkpoint is moved aside (the run falls back to the previous one), a
failed save leaves no partial directory, and no pre-existing checkpoint is rotated away by a
smaller keep count.

A checkpoint step holds four items: `params` (alone, so fine-tuning and weight conversion load
just them), `opt_state` (with the step), `data` (the input iterator's position: one JSON file
per process, merged on restore so any number of processes can resume it) and `meta` (the
model's identity, so a work dir is never silently resumed with a different model). Orbax
writes each step to a temporary directory and renames it when complete, so a crash mid-save
never leaves a checkpoint that looks whole.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import time
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp

from common.checkpoint_reader import meta_at, short_error
from common.data_state import DataRestore, DataSave, DataStateError

# Network-config fields that say how a model runs, not what it is: a run resumes or fine-tunes
# with other values of these (an fp32 run in bf16, another remat policy or attention kernel).
EXECUTION_FIELDS = frozenset({"dtype", "remat_policy", "attention_impl", "dropout_rate",
                              "attention_dropout_rate"})
# Where checkpoints are moved aside (never deleted): not step names, so Orbax skips them.
DAMAGED_DIR = "damaged"    # could not be restored
DIVERGED_DIR = "diverged"  # written after training began to diverge


class CheckpointError(OSError):
  """A checkpoint could not be written (disk full, permissions): one line for the user."""


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def identity_diff(saved: dict, current: dict, prefix: str = ""
                  ) -> list[tuple[str, object, object]]:
  """(dotted key, checkpoint value, config value) for every identity field that differs
  (execution settings of the model excepted)."""
  out = []
  for k in sorted(set(saved) | set(current)):
    if prefix == "model." and k in EXECUTION_FIELDS:
      continue
    a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += identity_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append((f"{prefix}{k}", a, b))
  return out


def _chain_text(e: BaseException | None) -> str:
  parts = []
  while e is not None:
    parts.append(str(e))
    e = e.__cause__ or e.__context__
  return " ".join(parts)


def _unreadable(e: BaseException) -> bool:
  """Whether a restore failed on the files (truncated, missing, garbage), not on a run whose
  settings changed the state's structure: Orbax wraps TensorStore's errors in a bare
  Exception, so the whole chain is looked at."""
  markers = ("OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "ZSTD", "Error reading", "Unexpected end",
             "not valid JSON", "No such file", "does not exist", "Failed to decode",
             "corrupt", "truncated", "was not found in the checkpoint", "Available items")
  while e is not None:
    if isinstance(e, (OSError, json.JSONDecodeError)) or any(m in str(e) for m in markers):
      return True
    e = e.__cause__ or e.__context__
  return False


class _Snapshot:
  """A data position taken when a save starts, for the (possibly later) data handler."""

  def __init__(self, state: Any):
    self.state = state

  def get_state(self) -> Any:
    return self.state


@dataclasses.dataclass
class _KeepPolicy:
  """Orbax preservation: the latest `n` checkpoints, plus `protected` steps (the last one
  written before training began to diverge: `common.hooks.DivergenceGuard`)."""
  n: int
  protected: set[int] = dataclasses.field(default_factory=set)

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
    del context
    latest = {c.step for c in checkpoints[-self.n:]}
    return [c.step in latest or c.step in self.protected for c in checkpoints]


class Checkpointer:
  """Policy layer over `ocp.CheckpointManager` for one work dir's `checkpoints/`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
               prune_existing: bool = False):
    if max_to_keep < 1:
      raise ValueError(f"train.keep_checkpoints={max_to_keep} must be >= 1 (it would delete "
                       "every checkpoint)")
    self.directory = os.path.abspath(directory)
    self.max_to_keep, self.async_save = max_to_keep, async_save
    self._manager: ocp.CheckpointManager | None = None
    self._pending: int | None = None
    self.keep = _KeepPolicy(max_to_keep)
    existing = self.steps()
    if len(existing) > max_to_keep and not prune_existing:
      raise ValueError(
          f"{self.directory} holds {len(existing)} checkpoints (steps {existing}) and "
          f"train.keep_checkpoints={max_to_keep} would delete the oldest "
          f"{len(existing) - max_to_keep} at the next save; raise train.keep_checkpoints or "
          "set --config.train.prune_checkpoints=True to allow it")

  @property
  def manager(self) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
          preservation_policy=self.keep, enable_async_checkpointing=self.async_save,
          create=False))
    return self._manager

  def steps(self) -> list[int]:
    """Complete checkpoint steps on disk, oldest first (none when the directory is absent)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(ocp.utils.checkpoint_steps(self.directory))

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def check_identity(self, identity: dict) -> None:
    """Raises if the latest checkpoint was written by a different model."""
    step = self.latest_step()
    if step is None:
      return
    diffs = identity_diff(meta_at(self.directory, step).get("identity", {}), identity)
    if diffs:
      described = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, a, b in diffs[:5])
      # Config fields (e.g. a preset that changed model.scan_layers) can be set back by flag.
      flags_ = " ".join(f"--config.{k}={a}" for k, a, _ in diffs
                        if k.startswith("model.") and isinstance(a, (bool, int, float, str))
                        and a != "<absent>")
      hint = f", or resume it with the checkpoint's values: {flags_}" if flags_ else ""
      raise ValueError(f"work dir {self.directory} holds a checkpoint of a different model "
                       f"({described}); use a new --workdir{hint}")

  def save(self, step: int, state: dict, data_iter: Any, identity: dict,
           extra_meta: dict | None = None) -> None:
    """Starts an (async) save once the previous one has finished; a failure of either is a
    CheckpointError naming the step, after its partial directory is removed."""
    self.wait()
    os.makedirs(self.directory, exist_ok=True)
    data_position = _Snapshot(data_iter.get_state())  # now: the iterator moves on at once
    self._pending = step
    try:
      self.manager.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(state["params"]),
          opt_state=ocp.args.StandardSave({"step": state["step"],
                                           "opt_state": state["opt_state"]}),
          data=DataSave(data_position),
          meta=ocp.args.JsonSave({"identity": identity, "step": int(step)}
                                 | (extra_meta or {}))), force=True)
    except Exception as e:  # pylint: disable=broad-except
      self._failed(step, e)

  def wait(self) -> None:
    if self._manager is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(self._pending, e)

  def _failed(self, step: int | None, e: BaseException) -> None:
    """Removes temporary save directories and raises one clear line."""
    for tmp in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
      shutil.rmtree(tmp, ignore_errors=True)
    which = f"checkpoint {step}" if step is not None else "a checkpoint"
    why = next((m for m in ("No space left on device", "Permission denied",
                            "Read-only file system") if m in _chain_text(e)), short_error(e))
    raise CheckpointError(f"saving {which} in {self.directory} failed: {why}; the partial save "
                          f"was removed; intact checkpoints: {self.steps()}") from e

  def restore(self, step: int, abstract_state: dict, shardings: dict, data_iter: Any) -> dict:
    """Restores onto `shardings` (any mesh: Orbax reshards on read); `data_iter` is moved to
    the saved position in place (None: the data position is not restored)."""
    target = _abstract(abstract_state, shardings)
    items = dict(params=ocp.args.StandardRestore(target["params"]),
                 opt_state=ocp.args.StandardRestore({"step": target["step"],
                                                     "opt_state": target["opt_state"]}))
    if data_iter is not None:
      items["data"] = DataRestore(data_iter)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    return {"step": out["opt_state"]["step"], "params": out["params"],
            "opt_state": out["opt_state"]["opt_state"]}

  def restore_latest(self, abstract_state: dict, shardings: dict, data_iter: Any
                     ) -> tuple[dict, int] | None:
    """(state, step) of the newest checkpoint that restores, or None if there is none. A
    checkpoint that fails to read is moved to `damaged/` (never deleted), with a warning
    naming it and why, and the previous one is tried."""
    for step in reversed(self.steps()):
      try:
        return self.restore(step, abstract_state, shardings, data_iter), step
      except DataStateError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if not _unreadable(e):
          raise ValueError(f"checkpoint {step} in {self.directory} does not fit this run's "
                           f"model and optimizer ({short_error(e)[:200]}); resume with the settings "
                           "it was written with (e.g. optimizer.name, optimizer.clip_norm) or "
                           "use a new --workdir") from e
        dest = self.move_aside(step, DAMAGED_DIR)
        print(f"warning: checkpoint {step} could not be restored ({short_error(e)}); moved to "
              f"{dest}; trying the previous one", flush=True)
    return None

  def move_aside(self, step: int, subdir: str) -> str:
    """Moves checkpoint `step` to `subdir/<step>-<time>` (resuming then skips it)."""
    self.wait()
    dest = os.path.join(self.directory, subdir, f"{step}-{int(time.time())}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"checkpoint_moved_{step}")
    if self._manager is not None:
      self._manager.reload()
    return dest

  def close(self) -> None:
    if self._manager is not None:
      try:
        self.wait()
      finally:
        self._manager.close()
        self._manager = None
