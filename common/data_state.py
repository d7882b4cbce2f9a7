"""The input pipeline's position inside a checkpoint, restorable by any number of processes.

Each process writes its iterator's `get_state()` (JSON) to its own file. On restore every
file is read and the states merged: identical states (a position that is the same on every
process) are one state; states of the lane-based pipelines (`common.data.lanes`: {"lanes":
{lane: position}, ...}) are the union of their lanes, so a run saved by N processes resumes on
M processes, each taking the lanes it now owns.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class DataStateError(ValueError):
  """A saved data position that this run cannot continue exactly."""


def merge_states(states: list[Any]) -> Any:
  """One state from the per-process states of a checkpoint."""
  if not states:
    raise DataStateError("the checkpoint holds no data position")
  if all(s == states[0] for s in states):
    return states[0]
  if all(isinstance(s, dict) and "lanes" in s for s in states):
    rest = [{k: v for k, v in s.items() if k != "lanes"} for s in states]
    if any(r != rest[0] for r in rest):
      raise DataStateError(f"the processes saved inconsistent data positions: {rest[:2]}")
    lanes: dict = {}
    for s in states:
      lanes.update(s["lanes"])
    return rest[0] | {"lanes": lanes}
  raise DataStateError("the checkpoint's data position was saved per process by an input "
                       "pipeline that cannot be resumed on another number of processes")


class DataStateHandler(ocp.CheckpointHandler):
  """Orbax handler: per-process JSON files, merged on restore."""

  def save(self, directory: epath.Path, args: "DataSave") -> None:
    path = epath.Path(directory) / f"process_{jax.process_index()}.json"
    path.write_text(json.dumps(args.item.get_state()))

  def restore(self, directory: epath.Path, args: "DataRestore") -> Any:
    files = sorted(epath.Path(directory).glob("process_*.json"))
    try:
      states = [json.loads(f.read_text()) for f in files]
    except json.JSONDecodeError as e:
      raise ValueError(f"data position in {directory} is not valid JSON ({e})") from None
    args.item.set_state(merge_states(states))
    return args.item

  def metadata(self, directory: epath.Path) -> None:
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: Any
