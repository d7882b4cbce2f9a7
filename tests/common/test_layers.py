"""Layers: logical axis names on every parameter, norms against numpy, MLP variants, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.layers import MLP, Dense, Embed, LayerNorm, RMSNorm, matmul


def _make(fn):
  with nnx.use_eager_sharding(False):
    return fn(nnx.Rngs(0))


def _names(module):
  return {jax.tree_util.keystr(p): v.get_metadata()["out_sharding"]
          for p, v in jax.tree_util.tree_flatten_with_path(
              nnx.state(module, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}


def test_every_parameter_has_logical_names():
  mlp = _make(lambda r: MLP(16, 32, activation="gated-gelu", rngs=r))
  names = _names(mlp)
  assert names["['wi']['kernel']"] == ("embed", "mlp")
  assert names["['wi_gate']['kernel']"] == ("embed", "mlp")
  assert names["['wo']['kernel']"] == ("mlp", "embed")
  assert names["['wo']['bias']"] == ("embed",)
  dense = _make(lambda r: Dense(16, (4, 8), names=("embed", "heads", "kv"), rngs=r))
  assert _names(dense)["['kernel']"] == ("embed", "heads", "kv")


def test_layernorm_and_rmsnorm_match_numpy():
  x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32) * 3 + 1
  ln = _make(lambda r: LayerNorm(16, rngs=r, eps=1e-6))
  want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(ln(jnp.asarray(x)), want, atol=1e-5)
  rms = _make(lambda r: RMSNorm(16, rngs=r, eps=1e-6))
  want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(rms(jnp.asarray(x)), want, atol=1e-5)


def test_norms_over_the_feature_axis_of_feature_major_activations():
  """axis=0 on [D, B] (feature-major decoding) equals the usual axis=-1 on [B, D]."""
  x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32) * 3 + 1
  for make in (lambda r: LayerNorm(16, rngs=r), lambda r: RMSNorm(16, rngs=r)):
    norm = _make(make)
    nnx.update(norm, jax.tree.map(lambda p: p + jnp.arange(16.0) / 16,
                                  nnx.state(norm, nnx.Param)))  # non-trivial scale and bias
    np.testing.assert_allclose(norm(jnp.asarray(x.T), axis=0).T, norm(jnp.asarray(x)),
                               atol=1e-6)


def test_embed_attend_is_tied():
  emb = _make(lambda r: Embed(10, 4, rngs=r))
  x = jnp.ones((1, 1, 4))
  np.testing.assert_allclose(emb.attend(x)[0, 0], emb.embedding[...].sum(-1), atol=1e-6)
  np.testing.assert_allclose(emb(jnp.array([3])), emb.embedding[...][3:4])


@pytest.mark.parametrize("activation,fn", [("relu", jax.nn.relu),
                                           ("gelu", lambda h: jax.nn.gelu(h, approximate=True))])
def test_mlp_math(activation, fn):
  mlp = _make(lambda r: MLP(8, 16, activation=activation, rngs=r, use_bias=False))
  x = jax.random.normal(jax.random.key(0), (2, 8))
  want = fn(x @ mlp.wi.kernel[...]) @ mlp.wo.kernel[...]
  np.testing.assert_allclose(mlp(x), want, atol=1e-5)


def test_gated_mlp_math():
  mlp = _make(lambda r: MLP(8, 16, activation="gated-gelu", rngs=r, use_bias=False))
  x = jax.random.normal(jax.random.key(0), (2, 8))
  h = jax.nn.gelu(x @ mlp.wi.kernel[...], approximate=True) * (x @ mlp.wi_gate.kernel[...])
  np.testing.assert_allclose(mlp(x), h @ mlp.wo.kernel[...], atol=1e-5)


def test_dense_multi_dim_matches_einsum_values_and_grads():
  # Dense flattens to one 2-D matmul (common.layers.matmul); in/out may each be several dims.
  x = jax.random.normal(jax.random.key(1), (2, 3, 4, 5))
  proj = _make(lambda r: Dense((4, 5), (6, 7), names=("heads", "kv", "embed", "mlp"), rngs=r))
  k, b = proj.kernel[...], proj.bias[...]
  np.testing.assert_allclose(proj(x), jnp.einsum("abij,ijmn->abmn", x, k) + b, rtol=1e-5,
                             atol=1e-6)
  ours = lambda x, k: jnp.sum(jnp.sin(matmul(x, k, 2, jnp.float32)))
  ref = lambda x, k: jnp.sum(jnp.sin(jnp.einsum("abij,ijmn->abmn", x, k)))
  for g, want in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(ref, (0, 1))(x, k)):
    assert g.shape == want.shape
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)


def test_unknown_activation():
  with pytest.raises(ValueError, match="unknown activation 'swish'"):
    _make(lambda r: MLP(8, 16, activation="swish", rngs=r))


def test_bf16_compute_keeps_fp32_params_and_is_close():
  d32 = _make(lambda r: Dense(64, 64, names=("embed", "mlp"), rngs=r))
  d16 = _make(lambda r: Dense(64, 64, names=("embed", "mlp"), rngs=r, dtype=jnp.bfloat16))
  assert d16.kernel[...].dtype == jnp.float32
  x = jax.random.normal(jax.random.key(0), (4, 64))
  y16 = d16(x)
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), d32(x), atol=0.05, rtol=0.05)
