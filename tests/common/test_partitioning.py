"""The partitioner: layouts that never replicate silently (fsdp moved to a divisible dim or split
in two), named errors, and jit/lower inside its mesh + rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from common import sharding
from common.layers import param
from common.partitioning import Partitioner, choose_fsdp_split


class _Net(nnx.Module):
  """Parameters shaped like GPT-2 1.5B's awkward ones, scaled down: d_model 20 over fsdp 8."""

  def __init__(self, rngs: nnx.Rngs, d: int = 20, big: bool = False):
    init = nnx.initializers.zeros
    self.qkv = param(rngs, init, (4, d, 3, 8 if not big else 4096),
                     ("layers", "embed", "heads", "kv"))
    self.mlp = param(rngs, init, (4, d, 32), ("layers", "embed", "mlp"))
    self.norm = param(rngs, init, (d,), ("embed",))


def _abstract(**kw):
  with nnx.use_eager_sharding(False):
    net = nnx.eval_shape(lambda: _Net(nnx.Rngs(0), **kw))
  return nnx.state(net, nnx.Param)


def test_divisible_dims_follow_the_rules():
  p = Partitioner(1, 8, 1, rules="fsdp")
  specs = p.param_specs(_abstract(d=32))
  assert specs["qkv"] == P(None, "fsdp", None, None) and specs["norm"] == P("fsdp")
  assert p.replicated == []


def test_fsdp_moves_to_another_dim_or_splits_in_two():
  p = Partitioner(1, 8, 1, rules="fsdp")
  abstract = _abstract(d=20)  # 20 is not divisible by 8
  specs = p.param_specs(abstract)
  assert specs["mlp"] == P(None, None, "fsdp")  # moved to the mlp dim (32)
  split = choose_fsdp_split(p, abstract)
  assert split == 2  # 20 over fsdp=4, the rest over fsdp_sub=2 on another dim
  q = p.with_fsdp_split(split)
  specs = q.param_specs(abstract)
  assert specs["qkv"] == P("fsdp_sub", "fsdp", None, None) or specs["qkv"] == P(
      None, "fsdp", None, "fsdp_sub")
  ways = lambda s: int(np.prod([q.mesh.shape[a] for e in s if e
                               for a in ((e,) if isinstance(e, str) else e)]))
  assert ways(specs["qkv"]) == 8 and ways(specs["mlp"]) == 8
  # The 1-D norm (20 values) cannot be sharded 8 ways: reported, but small, so no error.
  assert [r.name for r in q.replicated] == ["norm"] and q.replicated[0].small
  q.check_layout()
  # The batch goes over all fsdp devices either way: the same device order.
  assert q.batch_sharding().spec == P(("data", "fsdp", "fsdp_sub"), None)


def test_large_parameters_that_cannot_be_sharded_are_a_named_error():
  p = Partitioner(1, 1, 8)  # heads (3) over tensor=8
  p.param_specs(_abstract(big=True))
  with pytest.raises(ValueError, match=r"qkv \(4, 20, 3, 4096\): dim 2 \(3\) is not divisible "
                     r"by tensor=8.*allow_partial_sharding=True"):
    p.check_layout()
  lenient = Partitioner(1, 1, 8, allow_partial_sharding=True)
  lenient.param_specs(_abstract(big=True))
  lenient.check_layout()  # a warning instead


def test_jit_and_lower_run_inside_the_mesh_and_rules():
  p = Partitioner(2, 2, 2)

  def f(x):
    return sharding.constrain(x * 2, ("batch", None))

  x = jnp.ones((8, 4))
  out = p.jit(f)(x)
  np.testing.assert_array_equal(np.asarray(out), 2 * np.ones((8, 4)))
  assert out.sharding.spec[0] == ("data", "fsdp")
  hlo = p.jit(f).lower(x).as_text()
  assert "sharding" in hlo  # the activation constraint survived lowering
  def g(x):  # another function: jit caches traces per function and mesh, not per rules
    return sharding.constrain(x + 1, ("batch", None))

  with pytest.raises(RuntimeError, match="Partitioner.context"):
    with jax.set_mesh(p.mesh):
      jax.jit(g)(x)  # a mesh without rules: refused, not silently unconstrained
