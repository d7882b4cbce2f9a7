"""Mesh shapes: the config's (data, fsdp, tensor) sizes resolved over the devices, the
devices laid out in an order the interconnect likes (one slice or several), and where the
fsdp axes go on a parameter whose rules dimension they do not divide."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from common import sharding

FSDP, FSDP_SUB = "fsdp", "fsdp_sub"


@dataclasses.dataclass(frozen=True)
class MeshShape:
  """Sizes of the user-facing mesh axes; one of them may be -1 (all remaining devices)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def resolve(self, num_devices: int) -> tuple[int, int, int]:
    sizes = [self.data, self.fsdp, self.tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"mesh sizes (data, fsdp, tensor)={tuple(sizes)}: use positive sizes and "
                       "at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f"mesh {tuple(sizes)} cannot be laid over {num_devices} devices")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(f"mesh (data, fsdp, tensor)={tuple(sizes)} needs {math.prod(sizes)} "
                       f"devices, have {num_devices}")
    return tuple(sizes)


def check_mesh_config(mesh_cfg: ConfigDict) -> None:
  """Up-front validation of the config's `mesh` section (before data or devices are used)."""
  sharding.get_rules(mesh_cfg.rules)
  sizes = (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)
  if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh (data, fsdp, tensor)={sizes}: use positive sizes and at most one -1")


def device_grid(sizes: tuple[int, int, int], devices: Sequence[Any]) -> np.ndarray:
  """Devices as a (data, fsdp, tensor) array in an order the interconnect likes. Devices of
  several TPU slices (multi-slice) are laid out as MaxText does: the slices along the first
  of data, fsdp that they divide, each slice's torus inside (`create_hybrid_device_mesh`)."""
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices < 2:
    return np.asarray(jax.make_mesh(sizes, sharding.MESH_AXES, devices=devices,
                                    axis_types=(jax.sharding.AxisType.Auto,) * 3).devices)
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
  axis = next((i for i in (0, 1) if sizes[i] % slices == 0), None)
  if axis is None:
    raise ValueError(f"mesh (data, fsdp, tensor)={sizes} cannot span {slices} slices: the "
                     f"data or fsdp size must be a multiple of {slices}")
  dcn = [1, 1, 1]
  dcn[axis] = slices
  ici = [s // d for s, d in zip(sizes, dcn)]
  return np.asarray(mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices,
                                                         allow_split_physical_axes=True))


def place_fsdp(shape: tuple[int, ...], per_dim: list[tuple[str, ...]], d0: int, main: int,
                sub: int, axis_size: Callable[[Sequence[str]], int]
                ) -> tuple[list[tuple[str, ...]], int] | None:
  """Puts `fsdp` (size `main`) and `fsdp_sub` (size `sub`) on dimensions they divide.

  Candidates for each: the rules' fsdp dimension `d0` or a dimension no other axis shards;
  the pair sharding the most ways wins, then the one keeping fsdp on `d0`. Returns the new
  per-dimension axes and the sharding factor reached, or None if fsdp fits nowhere.
  """
  free = [d for d, axes in enumerate(per_dim) if not axes or axis_size(axes) == 1]
  cands = [d0] + [d for d in sorted(free, key=lambda d: -shape[d]) if d != d0]
  best = None
  sub_choices = cands + [None] if sub > 1 else [None]
  for i, j in itertools.product(cands + [None], sub_choices):
    use = {}
    for d, axes, size in ((i, (FSDP,), main), (j, (FSDP_SUB,), sub)):
      if d is not None:
        use[d] = use.get(d, ()) + axes
    ok = all(shape[d] % (axis_size(per_dim[d]) * math.prod(main if a == FSDP else sub
                                                             for a in axes)) == 0
             for d, axes in use.items())
    if not ok or not use:
      continue
    factor = (main if i is not None else 1) * (sub if j is not None else 1)
    key = (factor, i == d0, j == d0, -len(use))
    if best is None or key > best[0]:
      best = (key, use, factor)
  if best is None:
    return None
  _, use, factor = best
  out = list(per_dim)
  for d, axes in use.items():
    out[d] = tuple(out[d]) + axes
  return out, factor
