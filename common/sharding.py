"""Device mesh, logical-axis rules, and the helpers that turn them into shardings.

Parameters and activations name their dimensions logically (`embed`, `mlp`, `heads`, ...);
one rules table (data, as in T5X) maps each logical name to mesh axes (`data`, `fsdp`,
`tensor`). Changing the parallelism strategy means changing the table, never the model.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, Any], ...]

# Logical names used by parameters and activations; every one must appear in a rules table.
_COMMON: Rules = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("kv_length", None),
    ("layers", None),
    ("kv", None),
    ("positions", None),
    ("relpos_buckets", None),
    ("classes", None),
    ("act_embed", None),
)

RULE_PRESETS: dict[str, Rules] = {
    # Pure data parallelism: every parameter replicated.
    "data_parallel": _COMMON + (("embed", None), ("mlp", None), ("heads", None), ("vocab", None),
                                ("act_mlp", None), ("act_heads", None), ("act_vocab", None)),
    # ZeRO-3 style: parameters sharded along `embed` over the fsdp axis, gathered per use.
    "fsdp": _COMMON + (("embed", "fsdp"), ("mlp", None), ("heads", None), ("vocab", None),
                       ("act_mlp", None), ("act_heads", None), ("act_vocab", None)),
    # FSDP plus Megatron tensor parallelism over heads / mlp / vocab.
    "fsdp_tp": _COMMON + (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                          ("vocab", "tensor"), ("act_mlp", "tensor"), ("act_heads", "tensor"),
                          ("act_vocab", "tensor")),
}

_active_rules: list[Rules] = [RULE_PRESETS["fsdp_tp"]]


def get_rules(name_or_rules: str | Sequence) -> Rules:
  """A preset by name, or a user table given as ((logical, mesh_axes), ...)."""
  if isinstance(name_or_rules, str):
    if name_or_rules not in RULE_PRESETS:
      raise ValueError(f"unknown sharding rules {name_or_rules!r}; valid: {sorted(RULE_PRESETS)}")
    return RULE_PRESETS[name_or_rules]
  return tuple((k, v) for k, v in name_or_rules)


@contextlib.contextmanager
def axis_rules(rules: Rules) -> Iterator[None]:
  """Rules used by `constrain` while tracing (activations)."""
  _active_rules.append(rules)
  try:
    yield
  finally:
    _active_rules.pop()


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices; one size may be -1 (inferred)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes (data, fsdp, tensor)={tuple(sizes)}: use positive sizes and at "
                     "most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh {tuple(sizes)} cannot be laid over {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh (data, fsdp, tensor)={tuple(sizes)} needs {math.prod(sizes)} devices, "
                     f"have {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[str | None] | None, rules: Rules) -> P:
  """Maps logical axis names to a PartitionSpec; an unknown name is an error."""
  if not names:
    return P()
  table = dict(rules)
  out = []
  for n in names:
    if n is None:
      out.append(None)
    elif n not in table:
      raise ValueError(f"logical axis {n!r} has no sharding rule; known: {sorted(table)}")
    else:
      out.append(table[n])
  return P(*out)


def _drop_unusable(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Replicates a dim whose size the mesh axes do not divide (e.g. a 1-sized bias dim)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
    out.append(axes if dim % size == 0 else None)
  return P(*out)


def param_specs(abstract_state: nnx.State, rules: Rules) -> Any:
  """PartitionSpecs (as a pure dict) for every Variable from its `out_sharding` names."""
  def spec(v: nnx.Variable) -> P:
    return logical_to_spec(v.get_metadata().get("out_sharding"), rules)
  return nnx.to_pure_dict(jax.tree.map(spec, abstract_state,
                                       is_leaf=lambda x: isinstance(x, nnx.Variable)))


def specs_to_shardings(specs: Any, abstract: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of specs, replicating dims the mesh cannot divide."""
  return jax.tree.map(lambda s, a: NamedSharding(mesh, _drop_unusable(s, a.shape, mesh)),
                      specs, abstract, is_leaf=lambda x: isinstance(x, P))


def opt_state_specs(opt_state: Any, params: Any, param_spec_tree: Any) -> Any:
  """Specs for optimizer state, following each leaf's parameter.

  Optax states hold params-shaped trees (Adam's mu/nu) and, for Adafactor, factored moments
  whose shapes drop the last (`v_row`) or second-to-last (`v_col`) dim: they take their
  parameter's spec with that dim removed. Anything else (counts, scalars) is replicated.
  """
  flat_params = {jax.tree_util.keystr(p): (leaf.shape, s) for (p, leaf), s in zip(
      jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(
          param_spec_tree, is_leaf=lambda x: isinstance(x, P)))}

  by_length = sorted(flat_params.items(), key=lambda kv: -len(kv[0]))  # longest suffix wins

  def spec_for(path, leaf) -> P:
    key = jax.tree_util.keystr(path)
    shape = getattr(leaf, "shape", ())
    for pkey, (pshape, pspec) in by_length:
      if not key.endswith(pkey):
        continue
      full = tuple(pspec) + (None,) * (len(pshape) - len(pspec))
      if shape == pshape:
        return pspec
      if len(pshape) >= 2 and shape == pshape[:-1]:
        return P(*full[:-1])
      if len(pshape) >= 2 and shape == pshape[:-2] + pshape[-1:]:
        return P(*(full[:-2] + full[-1:]))
      return P()
    return P()

  return jax.tree_util.tree_map_with_path(spec_for, opt_state)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(names, _active_rules[-1])
  return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Batch dim over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % n:
    raise ValueError(f"{what}={batch_size} is not divisible by the data axes "
                     f"(data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {n})")


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch (this process's rows) -> globally sharded jax arrays."""
  out = {}
  for k, v in local.items():
    sharding = batch_sharding(mesh, v.ndim)
    global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out
