"""Basic Flax NNX layers shared by the BERT, T5 and GPT stacks.

Every parameter carries logical axis names (see `common/sharding.py` for the rules that map
them to mesh axes). Parameters are fp32; computation runs in a configurable dtype with matmuls
accumulating in fp32 (`preferred_element_type`), which is what makes bf16 fast on CPUs with
avx512_bf16 and is the usual TPU/GPU recipe.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from common import sharding

Initializer = Callable[..., jax.Array]
Shape = int | Sequence[int]


def _tuple(x: Shape) -> tuple[int, ...]:
  return (x,) if isinstance(x, int) else tuple(x)


def normal_init(std: float) -> Initializer:
  """T5X/GPT-2 style init; truncated at 2 std (BERT's `truncated_normal(0.02)`)."""
  return nnx.initializers.truncated_normal(stddev=std, lower=-2.0, upper=2.0)


def param(rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], names: tuple[str | None, ...]) -> nnx.Param:
  """An fp32 parameter annotated with logical axis names."""
  if len(names) != len(shape):
    raise ValueError(f"logical names {names} do not match shape {shape}")
  return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape, jnp.float32))


def accumulation_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """The result type of a matmul in `dtype`.

  Accelerators accumulate bf16 products in fp32 inside the matmul unit whatever the result
  type, so there the result stays bf16 and so do the gradients flowing back through it: a
  matmul returning fp32 gives its backward pass fp32 cotangents, and an H200 then ran the
  backward matmuls of GPT-2 124M as fp32/TF32 GEMMs. XLA:CPU is the other way round: its fast
  bf16 path is bf16 inputs with an fp32 result (about twice the rate of a bf16 result).
  """
  if jnp.dtype(dtype) == jnp.float32 or sharding.target_platform() == "cpu":
    return jnp.float32
  return jnp.dtype(dtype)


def matmul(x: jax.Array, kernel: jax.Array, n_contract: int, dtype: jnp.dtype) -> jax.Array:
  """Contracts the last `n_contract` dims of x with the first of kernel in `dtype`,
  accumulating in fp32.

  Computed as one 2-D [tokens, in] x [in, out] matmul (row-major reshapes are free). Why:
  XLA:CPU gives the backward pass of an N-D dot_general transposed layouts that it materialises
  with slow strided copies fused into the elementwise ops before them (a gated-GELU MLP's
  backward spent ~45 % of its time in such copies); in 2-D the dot absorbs the transposes.
  """
  batch_shape, in_shape = x.shape[:x.ndim - n_contract], x.shape[x.ndim - n_contract:]
  out_shape = kernel.shape[n_contract:]
  x_2d = x.reshape(math.prod(batch_shape), math.prod(in_shape))
  kernel_2d = kernel.reshape(math.prod(in_shape), math.prod(out_shape))
  y = jax.lax.dot_general(x_2d.astype(dtype), kernel_2d.astype(dtype), (((1,), (0,)), ((), ())),
                          preferred_element_type=accumulation_dtype(dtype))
  return y.reshape(batch_shape + out_shape).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def logits_matmul(x_NxD: jax.Array, table_VxD: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """fp32 logits x @ table.T from `dtype` operands; the backward pass multiplies the logits'
  gradient in `dtype` too (an fp32 cotangent would make both backward matmuls, the largest
  of a small model, run in fp32)."""
  return jax.lax.dot_general(x_NxD.astype(dtype), table_VxD.astype(dtype),
                             (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _logits_fwd(x, table, dtype):
  return logits_matmul(x, table, dtype), (x, table)


def _logits_bwd(dtype, residuals, g_NxV):
  x, table = residuals
  g = g_NxV.astype(dtype)
  dx = jax.lax.dot_general(g, table.astype(dtype), (((1,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)
  dtable = jax.lax.dot_general(g, x.astype(dtype), (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dtable.astype(table.dtype)


logits_matmul.defvjp(_logits_fwd, _logits_bwd)


class Dense(nnx.Module):
  """DenseGeneral: maps `in_shape` trailing dims to `out_shape` dims (e.g. embed -> heads x kv)."""

  def __init__(self, in_shape: Shape, out_shape: Shape, *, names: Sequence[str | None],
               rngs: nnx.Rngs, use_bias: bool = True, init_std: float = 0.02,
               dtype: jnp.dtype = jnp.float32):
    self.in_shape, self.out_shape = _tuple(in_shape), _tuple(out_shape)
    names = tuple(names)
    self.kernel = param(rngs, normal_init(init_std), self.in_shape + self.out_shape, names)
    self.bias = (param(rngs, nnx.initializers.zeros, self.out_shape, names[len(self.in_shape):])
                 if use_bias else None)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = matmul(x, self.kernel[...], len(self.in_shape), self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Embed(nnx.Module):
  """Token embedding; `attend` reuses the table for tied output logits."""

  def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs,
               init_std: float = 0.02, dtype: jnp.dtype = jnp.float32,
               names: tuple[str, str] = ("vocab", "embed")):
    self.embedding = param(rngs, normal_init(init_std), (num_embeddings, features), names)
    self.names, self.dtype = names, dtype

  def __call__(self, ids: jax.Array) -> jax.Array:
    # Gather from a table whose feature dim is whole: the batch dim of `ids` uses the fsdp axis
    # too, and a gather cannot be partitioned over the same axis twice (XLA would replicate).
    table = sharding.constrain(self.embedding[...], (self.names[0], None))
    return jnp.take(table, ids, axis=0).astype(self.dtype)

  def attend(self, x_BxLxD: jax.Array) -> jax.Array:
    """Logits against the embedding table, accumulated (and returned) in fp32."""
    x_NxD = x_BxLxD.reshape(-1, x_BxLxD.shape[-1])
    logits = logits_matmul(x_NxD, self.embedding[...], jnp.dtype(self.dtype))
    return logits.reshape(x_BxLxD.shape[:-1] + logits.shape[-1:])


def _along(v_D: jax.Array, ndim: int, axis: int) -> jax.Array:
  """A per-feature vector shaped to broadcast along `axis` of an `ndim`-dim array."""
  shape = [1] * ndim
  shape[axis] = v_D.shape[0]
  return v_D.reshape(shape)


class LayerNorm(nnx.Module):
  """LayerNorm computed in fp32 (statistics in low precision lose too much)."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, eps: float = 1e-5, use_bias: bool = True,
               dtype: jnp.dtype = jnp.float32):
    self.scale = param(rngs, nnx.initializers.ones, (features,), ("embed",))
    self.bias = param(rngs, nnx.initializers.zeros, (features,), ("embed",)) if use_bias else None
    self.eps, self.dtype = eps, dtype

  def __call__(self, x: jax.Array, axis: int = -1) -> jax.Array:
    """Normalises over `axis` (0 for feature-major [D, B] decoding activations)."""
    x = x.astype(jnp.float32)
    mean = x.mean(axis, keepdims=True)
    var = jnp.square(x - mean).mean(axis, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * _along(self.scale[...], x.ndim, axis)
    if self.bias is not None:
      y = y + _along(self.bias[...], x.ndim, axis)
    return y.astype(self.dtype)


class RMSNorm(nnx.Module):
  """T5's LayerNorm: scale only, no mean subtraction, no bias."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, eps: float = 1e-6,
               dtype: jnp.dtype = jnp.float32):
    self.scale = param(rngs, nnx.initializers.ones, (features,), ("embed",))
    self.eps, self.dtype = eps, dtype

  def __call__(self, x: jax.Array, axis: int = -1) -> jax.Array:
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(axis, keepdims=True) + self.eps)
    return (y * _along(self.scale[...], x.ndim, axis)).astype(self.dtype)


def make_norm(kind: str, features: int, *, rngs: nnx.Rngs, eps: float, use_bias: bool,
              dtype: jnp.dtype) -> nnx.Module:
  if kind == "layernorm":
    return LayerNorm(features, rngs=rngs, eps=eps, use_bias=use_bias, dtype=dtype)
  if kind == "rmsnorm":
    return RMSNorm(features, rngs=rngs, eps=eps, dtype=dtype)
  raise ValueError(f"unknown norm {kind!r}; valid: 'layernorm', 'rmsnorm'")


ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=True),
               "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
               "relu": jax.nn.relu}


class MLP(nnx.Module):
  """Feed-forward block: `gelu`/`gelu_exact`/`relu`, or gated (`gated-gelu`, T5.1.1)."""

  def __init__(self, d_model: int, d_ff: int, *, activation: str, rngs: nnx.Rngs,
               use_bias: bool = True, init_std: float = 0.02, out_init_std: float | None = None,
               dropout_rate: float = 0.0, dtype: jnp.dtype = jnp.float32):
    self.gated = activation.startswith("gated-")
    act = activation.removeprefix("gated-")
    if act not in ACTIVATIONS:
      raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)} "
                       "optionally prefixed by 'gated-'")
    self.act = act
    dense = lambda i, o, names, std: Dense(i, o, names=names, rngs=rngs, use_bias=use_bias,
                                          init_std=std, dtype=dtype)
    self.wi = dense(d_model, d_ff, ("embed", "mlp"), init_std)
    self.wi_gate = dense(d_model, d_ff, ("embed", "mlp"), init_std) if self.gated else None
    self.wo = dense(d_ff, d_model, ("mlp", "embed"), out_init_std or init_std)
    self.dropout = nnx.Dropout(dropout_rate)

  def __call__(self, x: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
    h = ACTIVATIONS[self.act](self.wi(x))
    if self.wi_gate is not None:
      h = h * self.wi_gate(x)
    h = self.dropout(h, deterministic=dropout_key is None, rngs=dropout_key)
    return self.wo(h)
