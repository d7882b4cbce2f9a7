"""Logical-axis rules (data, as in T5X) and activation sharding constraints.

Parameters and activations name their dimensions logically (`embed`, `mlp`, `heads`, ...);
one rules table maps each logical name to mesh axes (`data`, `fsdp`, `tensor`). Changing the
parallelism strategy means changing the table, never the model. The mesh and the shardings
built from these rules belong to `common.partitioning.Partitioner`.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

import jax
from jax.sharding import Mesh, PartitionSpec as P

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

# The spec function of the partitioner whose context is active (`partition_context`).
_spec_fn: contextvars.ContextVar[Callable[[Sequence[str | None]], P] | None] = (
    contextvars.ContextVar("flax_pretrain_spec_fn", default=None))
# The platform of that partitioner's devices: what a program is compiled for, which can differ
# from this host's backend when compiling ahead of time for a TPU or GPU target.
_platform: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flax_pretrain_platform", default=None)


def get_rules(name: str) -> Rules:
  """A rules preset by name."""
  if name not in RULE_PRESETS:
    raise ValueError(f"unknown mesh.rules {name!r}; valid: {', '.join(sorted(RULE_PRESETS))}")
  return RULE_PRESETS[name]


@contextlib.contextmanager
def partition_context(mesh: Mesh, spec_fn: Callable[[Sequence[str | None]], P]
                      ) -> Iterator[None]:
  """The mesh, and logical names -> device specs, for `constrain` while tracing
  (entered by `Partitioner.context()`)."""
  token = _spec_fn.set(spec_fn)
  platform_token = _platform.set(mesh.devices.flat[0].platform)
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _platform.reset(platform_token)
    _spec_fn.reset(token)


def target_platform() -> str:
  """'cpu', 'gpu' (or 'cuda') or 'tpu': the devices the traced program will run on."""
  return _platform.get() or jax.default_backend()


def logical_to_spec(names: Sequence[str | None] | None, rules: Rules) -> P:
  """Maps logical axis names to a PartitionSpec of user mesh axes; unknown names are errors."""
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
  if jax.sharding.get_abstract_mesh().empty:
    return x
  spec_fn = _spec_fn.get()
  if spec_fn is None:
    raise RuntimeError("a mesh is set but no logical-axis rules: trace inside "
                       "Partitioner.context() (Partitioner.jit does this)")
  return jax.lax.with_sharding_constraint(x, spec_fn(names))
