"""The partitioner: one object owns the mesh, the logical-axis rules and every sharding, and
jits functions inside them (T5X's `PjitPartitioner`).

Training, evaluation, generation, inference, conversion and ahead-of-time compilation all
build one `Partitioner` from the config's `mesh` section and go through `Partitioner.jit`,
which enters the mesh + rules context itself, for calls and for `lower()` alike (outside it
every activation constraint would silently vanish).

Parameter layouts never replicate silently. A parameter dimension the fsdp axis does not
divide (GPT-2 1.5B's d_model 1600 over 256 devices) is laid out another way: the fsdp axis
moves to another dimension it divides, or it is split into two sub-axes (`fsdp` x
`fsdp_sub`, a refinement of the same device order) that shard two dimensions, e.g. 1600 over
64 and the 48 layers over 4. Whatever still cannot be sharded as the rules say is reported by
name, shape and axis size: an error unless `mesh.allow_partial_sharding` is set.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from common import sharding
from common.mesh import FSDP, FSDP_SUB, MeshShape, check_mesh_config, device_grid, place_fsdp

DEVICE_AXES = ("data", FSDP, FSDP_SUB, "tensor")


# A parameter this small (fp32 bytes) sharded only part of the fsdp ways costs nothing worth
# an error (GPT-2 1.5B's final LayerNorm, 1600 values over 256 devices): it is reported only.
SMALL_PARAM_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Replicated:
  """A parameter dimension left unsharded (or sharded fewer ways) although the rules shard it."""
  name: str
  shape: tuple[int, ...]
  dim: int
  axis: str
  size: int

  @property
  def small(self) -> bool:
    return math.prod(self.shape) * 4 <= SMALL_PARAM_BYTES

  def __str__(self) -> str:
    return (f"{self.name} {self.shape}: dim {self.dim} ({self.shape[self.dim]}) is not "
            f"divisible by {self.axis}={self.size}")


class PartitionedFunction:
  """A jitted function that always runs, and lowers, inside its partitioner's context."""

  def __init__(self, partitioner: "Partitioner", jitted: Any):
    self.partitioner = partitioner
    self.jitted = jitted

  def __call__(self, *args, **kwargs):
    with self.partitioner.context():
      return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs) -> jax.stages.Lowered:
    """Lowers for the partitioner's devices (which may be an ahead-of-time topology's)."""
    with self.partitioner.context():
      return self.jitted.lower(*args, **kwargs)


class Partitioner:
  """Mesh + rules + shardings. Build with `from_config`; lay parameters out with
  `param_shardings`; compile with `jit`."""

  def __init__(self, data: int = -1, fsdp: int = 1, tensor: int = 1, *,
               rules: str = "fsdp_tp", devices: Sequence[Any] | None = None,
               fsdp_split: int = 1, allow_partial_sharding: bool = False):
    devices = list(devices if devices is not None else jax.devices())
    self.sizes = MeshShape(data, fsdp, tensor).resolve(len(devices))
    data, fsdp, tensor = self.sizes
    if fsdp % fsdp_split:
      raise ValueError(f"fsdp_split={fsdp_split} does not divide fsdp={fsdp}")
    self.rules_name = rules
    self.rules = sharding.get_rules(rules)
    self.fsdp_split = fsdp_split
    self.allow_partial_sharding = allow_partial_sharding
    # fsdp is laid out as fsdp x fsdp_sub: the same device order, so a dimension sharded over
    # both together is sharded exactly as over an unsplit fsdp axis.
    grid = device_grid(self.sizes, devices).reshape(data, fsdp // fsdp_split, fsdp_split,
                                                     tensor)
    self.mesh = Mesh(grid, DEVICE_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
    self.replicated: list[Replicated] = []

  @classmethod
  def from_config(cls, mesh_cfg: ConfigDict, *, devices: Sequence[Any] | None = None
                  ) -> "Partitioner":
    """From the config's `mesh` section (sizes, `rules` preset, `allow_partial_sharding`)."""
    check_mesh_config(mesh_cfg)
    return cls(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, rules=mesh_cfg.rules,
               devices=devices,
               allow_partial_sharding=mesh_cfg.get("allow_partial_sharding", False))

  def with_fsdp_split(self, fsdp_split: int) -> "Partitioner":
    """The same mesh with fsdp laid out as (fsdp / fsdp_split) x fsdp_split."""
    return Partitioner(*self.sizes, rules=self.rules_name, devices=list(self.devices),
                       fsdp_split=fsdp_split, allow_partial_sharding=self.allow_partial_sharding)

  @property
  def devices(self) -> list[Any]:
    return list(self.mesh.devices.flat)

  @property
  def num_processes(self) -> int:
    """Hosts driving the mesh (a TPU topology's hosts when compiling ahead of time)."""
    return len({d.process_index for d in self.devices})

  # ------------------------------------------------------------------ axes and specs

  @property
  def shape(self) -> dict[str, int]:
    """The user-facing mesh sizes {data, fsdp, tensor}."""
    return dict(zip(sharding.MESH_AXES, self.sizes))

  @property
  def num_data(self) -> int:
    """How many ways the batch is split (data x fsdp)."""
    return self.sizes[0] * self.sizes[1]

  def _expand(self, axes: Any) -> tuple[str, ...]:
    """User axes -> device axes (fsdp is fsdp x fsdp_sub when split)."""
    out = []
    for a in _axes(axes):
      out += [FSDP, FSDP_SUB] if a == FSDP and self.fsdp_split > 1 else [a]
    return tuple(out)

  def _axis_size(self, axes: Sequence[str]) -> int:
    return math.prod(self.mesh.shape[a] for a in axes)

  def spec(self, names: Sequence[str | None] | None) -> P:
    """Logical names -> PartitionSpec over the device mesh (activations, batches)."""
    return self._device_spec(sharding.logical_to_spec(names, self.rules))

  def _device_spec(self, spec: P) -> P:
    return P(*(self._pack(self._expand(a)) for a in spec))

  @staticmethod
  def _pack(axes: tuple[str, ...]) -> Any:
    return None if not axes else axes[0] if len(axes) == 1 else axes

  def context(self):
    """Mesh + rules active while tracing, so activation constraints resolve."""
    return sharding.partition_context(self.mesh, self.spec)

  # ------------------------------------------------------------------ parameter layout

  def param_specs(self, abstract_params: nnx.State) -> Any:
    """PartitionSpecs (a pure dict) for every parameter, laid out so that each dimension's
    mesh axes divide it (`_layout`); what could not be is recorded in `self.replicated`."""
    self.replicated = []

    def spec(path, v: nnx.Variable) -> P:
      names = v.get_metadata().get("out_sharding")
      logical = sharding.logical_to_spec(names, self.rules)
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      out, lost = self._layout(tuple(v.shape), logical, name)
      self.replicated += lost
      return out

    specs = jax.tree_util.tree_map_with_path(
        spec, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(specs)

  def check_layout(self) -> None:
    """Raises (or, with mesh.allow_partial_sharding, warns) about replicated dimensions of
    parameters larger than SMALL_PARAM_BYTES; small ones are in `self.replicated` only."""
    large = [r for r in self.replicated if not r.small]
    if not large:
      return
    lines = "; ".join(str(r) for r in large[:8])
    more = f" (and {len(large) - 8} more)" if len(large) > 8 else ""
    msg = (f"mesh {self.shape} with rules {self.rules_name!r} cannot shard "
           f"{len(large)} parameter dimension(s) as the rules say: {lines}{more}. "
           "Choose mesh sizes that divide them (e.g. a smaller fsdp with a data axis) or other "
           "rules; --config.mesh.allow_partial_sharding=True replicates them instead")
    if not self.allow_partial_sharding:
      raise ValueError(msg)
    print(f"warning: {msg}", flush=True)

  def _layout(self, shape: tuple[int, ...], logical: P, name: str
              ) -> tuple[P, list[Replicated]]:
    """Device spec for one parameter, and the dimensions left replicated."""
    per_dim = [self._expand(a) for a in tuple(logical) + (None,) * (len(shape) - len(logical))]
    lost = []
    # Non-fsdp axes (tensor, data): kept where they divide, else reported.
    for d, axes in enumerate(per_dim):
      other = tuple(a for a in axes if a not in (FSDP, FSDP_SUB))
      if other and shape[d] % self._axis_size(other):
        lost.append(Replicated(name, shape, d, "x".join(other), self._axis_size(other)))
        per_dim[d] = tuple(a for a in axes if a in (FSDP, FSDP_SUB))
    fsdp_dims = [d for d, axes in enumerate(per_dim) if FSDP in axes]
    if fsdp_dims and self.sizes[1] > 1:
      d0 = fsdp_dims[0]
      per_dim = [tuple(a for a in axes if a not in (FSDP, FSDP_SUB)) for axes in per_dim]
      placed = place_fsdp(shape, per_dim, d0, self.sizes[1] // self.fsdp_split,
                           self.fsdp_split, self._axis_size)
      if placed is None:
        lost.append(Replicated(name, shape, d0, FSDP, self.sizes[1]))
      else:
        per_dim, factor = placed
        if factor < self.sizes[1]:
          lost.append(Replicated(name, shape, d0, FSDP, self.sizes[1]))
    elif fsdp_dims:  # fsdp of size 1: nothing to place
      per_dim = [tuple(a for a in axes if a != FSDP_SUB) for axes in per_dim]
    return P(*(self._pack(a) for a in per_dim)), lost

  def shardings(self, specs: Any, abstract: Any) -> Any:
    """NamedShardings for a tree of specs (every dimension divisible, or an error)."""
    def make(s: P, a: Any) -> NamedSharding:
      for dim, axes in zip(a.shape, tuple(s)):
        if axes is not None and dim % self._axis_size(_axes(axes)):
          raise ValueError(f"spec {s} does not divide shape {a.shape}")
      return NamedSharding(self.mesh, s)
    return jax.tree.map(make, specs, abstract, is_leaf=lambda x: isinstance(x, P))

  # ------------------------------------------------------------------ batches

  def batch_sharding(self, ndim: int = 2) -> NamedSharding:
    """Batch dim over (data, fsdp), the rest replicated."""
    return NamedSharding(self.mesh, P(self._pack(self._expand(sharding.BATCH_AXES)),
                                      *([None] * (ndim - 1))))

  def replicated_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def check_batch(self, batch_size: int, what: str = "batch_size") -> None:
    if batch_size % self.num_data:
      raise ValueError(f"{what}={batch_size} is not divisible by the data axes (data x fsdp = "
                       f"{self.sizes[0]} x {self.sizes[1]} = {self.num_data})")

  def global_batch(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host-local numpy batch (this process's rows) -> globally sharded jax arrays."""
    out = {}
    for k, v in local.items():
      global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
      out[k] = jax.make_array_from_process_local_data(self.batch_sharding(v.ndim), v,
                                                      global_shape)
    return out

  # ------------------------------------------------------------------ compilation

  def jit(self, fn: Callable, *, in_shardings: Any = None, out_shardings: Any = None,
          donate_argnums: int | Sequence[int] = (), static_argnames: Sequence[str] = ()
          ) -> PartitionedFunction:
    kwargs = dict(donate_argnums=donate_argnums, static_argnames=static_argnames)
    if in_shardings is not None:
      kwargs["in_shardings"] = in_shardings
    if out_shardings is not None:
      kwargs["out_shardings"] = out_shardings
    return PartitionedFunction(self, jax.jit(fn, **kwargs))


def _axes(entry: Any) -> tuple[str, ...]:
  """A PartitionSpec entry as a tuple of mesh axes."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def choose_fsdp_split(partitioner: Partitioner, abstract_params: nnx.State) -> int:
  """The split of fsdp into fsdp x fsdp_sub that leaves the fewest parameter bytes per device
  (1, no split, when every fsdp dimension is divisible)."""
  fsdp = partitioner.sizes[1]
  leaves = jax.tree.leaves(abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))

  def cost(split: int) -> tuple[float, int]:
    p = partitioner if split == partitioner.fsdp_split else partitioner.with_fsdp_split(split)
    specs = jax.tree.leaves(p.param_specs(abstract_params), is_leaf=lambda x: isinstance(x, P))
    total = 0.0
    for v, s in zip(leaves, specs):
      ways = math.prod(p._axis_size(_axes(a)) for a in s if a is not None)
      total += math.prod(v.shape) / ways
    return total, split

  return min(cost(s) for s in range(1, fsdp + 1) if fsdp % s == 0)[1]
