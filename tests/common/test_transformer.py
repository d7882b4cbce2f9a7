"""Layer stack: scanned == looped, remat does not change gradients, pre/post-LN differ; a layer
with a KV cache and precomputed cross-attention keys/values = the layer over whole sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.attention import KVCache, make_mask
from common.transformer import LayerConfig, LayerStack, TransformerLayer

CFG = LayerConfig(d_model=32, num_heads=4, head_dim=8, d_ff=64)


def _stack(scan, remat="none", cfg=CFG, cross=False):
  with nnx.use_eager_sharding(False):
    return LayerStack(cfg, 3, rngs=nnx.Rngs(0), scan=scan, remat_policy=remat,
                      cross_attention=cross)


def _copy_scanned_into_loop(scanned, looped):
  state = nnx.state(scanned.layers, nnx.Param)
  for i, layer in enumerate(looped.layers):
    nnx.update(layer, jax.tree.map(lambda a: a[i], state))


def _inputs():
  x = jax.random.normal(jax.random.key(0), (2, 5, 32))
  seg = jnp.array([[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]])
  return x, make_mask(seg, seg, causal=True)


def test_scanned_equals_looped():
  scanned, looped = _stack(True), _stack(False)
  _copy_scanned_into_loop(scanned, looped)
  x, mask = _inputs()
  np.testing.assert_allclose(scanned(x, mask=mask), looped(x, mask=mask), atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_keeps_gradients(policy):
  plain, remat = _stack(True), _stack(True, policy)
  x, mask = _inputs()

  def grad(stack):
    gd, params = nnx.split(stack)
    return jax.grad(lambda p: nnx.merge(gd, p)(x, mask=mask).sum())(params)

  for a, b in zip(jax.tree.leaves(grad(plain)), jax.tree.leaves(grad(remat))):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_post_ln_output_is_normalised():
  post = _stack(True, cfg=LayerConfig(d_model=32, num_heads=4, head_dim=8, d_ff=64,
                                      pre_norm=False))
  x, mask = _inputs()
  y = post(x * 10, mask=mask)
  np.testing.assert_allclose(y.mean(-1), 0, atol=1e-4)
  np.testing.assert_allclose(y.std(-1), 1, atol=1e-2)


def test_cross_attention_uses_encoder_output():
  stack = _stack(True, cross=True)
  x, mask = _inputs()
  enc = jax.random.normal(jax.random.key(5), (2, 7, 32))
  cross_mask = make_mask(jnp.ones((2, 5), jnp.int32), jnp.ones((2, 7), jnp.int32), causal=False)
  a = stack(x, mask=mask, encoded_BxSxD=enc, cross_mask=cross_mask)
  b = stack(x, mask=mask, encoded_BxSxD=enc * 2, cross_mask=cross_mask)
  assert not np.allclose(a, b)


def test_dropout_needs_key_and_is_deterministic_per_key():
  cfg = LayerConfig(d_model=32, num_heads=4, head_dim=8, d_ff=64, dropout_rate=0.5)
  stack = _stack(True, cfg=cfg)
  x, mask = _inputs()
  k = jax.random.key(7)
  np.testing.assert_array_equal(stack(x, mask=mask, dropout_key=k),
                                stack(x, mask=mask, dropout_key=k))
  assert not np.allclose(stack(x, mask=mask, dropout_key=k), stack(x, mask=mask))


def test_unknown_remat_policy():
  with pytest.raises(ValueError, match="remat_policy"):
    _stack(True, "bogus")


def test_cached_steps_with_precomputed_cross_kv_equal_the_whole_sequence():
  """Decoding a row token by token (self-attention KV cache, cross-attention keys/values from
  `project_kv`) gives the layer's whole-sequence outputs (T5's decoder step)."""
  with nnx.use_eager_sharding(False):
    layer = TransformerLayer(CFG, cross_attention=True, rngs=nnx.Rngs(3))
  x, mask = _inputs()
  seg = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
  enc = jax.random.normal(jax.random.key(5), (2, 7, 32))
  enc_seg = jnp.array([[1] * 7, [1] * 4 + [0] * 3])
  mask = make_mask(seg, seg, causal=True)
  want, _ = layer(x, mask=mask, encoded_BxSxD=enc, causal=True,
                  cross_mask=make_mask(seg, enc_seg, causal=False))
  cross_kv = layer.cross_attn.project_kv(enc)
  cache = KVCache.zeros(2, 5, 4, 8, jnp.float32)
  for t in range(5):
    step_mask = make_mask(seg[:, t:t + 1], seg, causal=True, q_index=jnp.asarray([t]))
    got, cache = layer(x[:, t:t + 1], mask=step_mask, cross_kv=cross_kv, cache=cache,
                       cache_index=jnp.asarray(t),
                       cross_mask=make_mask(seg[:, t:t + 1], enc_seg, causal=False))
    real = np.asarray(seg[:, t] > 0)
    np.testing.assert_allclose(got[real, 0], want[real, t], atol=1e-5)
