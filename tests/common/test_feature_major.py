"""Feature-major decoding step = the layer's own cached forward pass; unsupported layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import feature_major
from common.attention import KVCache, make_mask
from common.transformer import LayerConfig, TransformerLayer

B, H, DH, L = 3, 4, 8, 12


def _layer(**kw) -> TransformerLayer:
  cfg = LayerConfig(d_model=32, num_heads=H, head_dim=DH, d_ff=64, **kw)
  with nnx.use_eager_sharding(False):
    layer = TransformerLayer(cfg, rngs=nnx.Rngs(0))
  # Non-zero biases and norm parameters, so a dropped or misplaced term shows.
  keys = iter(jax.random.split(jax.random.key(1), 64))
  nnx.update(layer, jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape),
                                 nnx.state(layer, nnx.Param)))
  return layer


@pytest.mark.parametrize("kw", [
    {},  # GPT: layernorm, gelu, biases
    {"activation": "gated-gelu", "norm": "rmsnorm", "use_bias": False},
])
def test_step_equals_the_layer_with_a_cache(kw):
  layer = _layer(**kw)
  keys = jax.random.split(jax.random.key(2), 4)
  cache = KVCache(jax.random.normal(keys[0], (B, H, L, DH)),
                  jax.random.normal(keys[1], (B, H, L, DH)))
  x_BxD = jax.random.normal(keys[2], (B, 32))
  index = jnp.asarray(7)
  # Row 0 attends to slots 0..7, row 1 had a left-padded prompt (slots 0..2 empty), row 2 to
  # slot 7 only: the mask of a ragged batch mid-decoding.
  slots = jnp.array([[1] * 8 + [0] * 4, [0] * 3 + [1] * 5 + [0] * 4, [0] * 7 + [1] + [0] * 4])
  mask = make_mask(jnp.ones((B, 1), jnp.int32), slots, causal=True, q_index=index[None])
  want_x, want_cache = layer(x_BxD[:, None], mask=mask, cache=cache, cache_index=index)
  w = feature_major.prepare(layer, jnp.float32)
  got_x, got_cache = feature_major.layer_step(layer, w, x_BxD.T, cache=cache,
                                              cache_index=index, mask_Bx1x1xL=mask)
  np.testing.assert_allclose(got_x.T, want_x[:, 0], atol=1e-5, rtol=1e-5)
  for got, want in zip(got_cache, want_cache):
    np.testing.assert_allclose(got, want, atol=1e-6)
  # the new keys/values went to slot 7 and nowhere else
  np.testing.assert_array_equal(np.delete(got_cache.k, 7, axis=2), np.delete(cache.k, 7, axis=2))


@pytest.mark.parametrize("kw,cross", [({"pre_norm": False}, False), ({}, True)])
def test_unsupported_layers_are_refused(kw, cross):
  cfg = LayerConfig(d_model=32, num_heads=H, head_dim=DH, d_ff=64, **kw)
  with nnx.use_eager_sharding(False):
    layer = TransformerLayer(cfg, cross_attention=cross, rngs=nnx.Rngs(0))
  assert not feature_major.supports(layer)
  with pytest.raises(ValueError, match="pre-LN layer without cross-attention"):
    feature_major.prepare(layer, jnp.float32)
