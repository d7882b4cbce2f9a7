"""Masks (causal, packed segments, padding) against brute force; attention never crosses
a document boundary; the KV cache reproduces full attention."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.attention import (
  LayerCaches,
  MultiHeadAttention,
  add_shared_bias,
  causal_attention_blocks,
  heads_major_attention,
  make_mask,
)


def _brute_mask(seg, causal):
  b, n = seg.shape
  m = np.zeros((b, 1, n, n), bool)
  for i, q, k in itertools.product(range(b), range(n), range(n)):
    m[i, 0, q, k] = seg[i, q] != 0 and seg[i, q] == seg[i, k] and (not causal or k <= q)
  return m


def test_mask_matches_brute_force():
  seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
  for causal in (True, False):
    np.testing.assert_array_equal(np.asarray(make_mask(seg, seg, causal=causal)),
                                  _brute_mask(seg, causal))


def _attn():
  with nnx.use_eager_sharding(False):
    return MultiHeadAttention(32, 4, 8, rngs=nnx.Rngs(0))


def test_packed_documents_equal_separate_documents():
  """Outputs for each packed document equal running that document alone."""
  attn = _attn()
  x = jax.random.normal(jax.random.key(1), (1, 10, 32))
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 3, 3, 0]])
  packed, _ = attn(x, mask=make_mask(seg, seg, causal=True))
  for s in (1, 2, 3):
    idx = np.where(np.asarray(seg[0]) == s)[0]
    alone_x = x[:, idx]
    ones = jnp.ones((1, len(idx)), jnp.int32)
    alone, _ = attn(alone_x, mask=make_mask(ones, ones, causal=True))
    np.testing.assert_allclose(packed[0, idx], alone[0], atol=1e-5)


def test_no_gradient_flows_across_documents():
  attn = _attn()
  seg = jnp.array([[1, 1, 1, 2, 2, 2]])
  mask = make_mask(seg, seg, causal=False)
  x = jax.random.normal(jax.random.key(2), (1, 6, 32))
  # d(output of doc 2) / d(input of doc 1) must be exactly zero.
  jac = jax.jacobian(lambda x: attn(x, mask=mask)[0][0, 3:].sum())(x)
  assert np.all(np.asarray(jac[0, :3]) == 0)
  assert np.any(np.asarray(jac[0, 3:]) != 0)


def test_bias_is_added_to_logits():
  attn = _attn()
  x = jax.random.normal(jax.random.key(3), (1, 4, 32))
  seg = jnp.ones((1, 4), jnp.int32)
  mask = make_mask(seg, seg, causal=False)
  huge = jnp.full((1, 4, 4, 4), -1e9).at[..., 0].set(0.0)  # force attention onto key 0
  out, _ = attn(x, mask=mask, bias=huge)
  only0, _ = attn(x, mask=mask & (jnp.arange(4) == 0))
  np.testing.assert_allclose(out, only0, atol=1e-5)


def test_shared_bias_gradient_is_the_batch_sum():
  logits = jax.random.normal(jax.random.key(5), (3, 2, 4, 4))
  bias = jax.random.normal(jax.random.key(6), (1, 2, 4, 4))
  w = jax.random.normal(jax.random.key(7), logits.shape)
  f = lambda fn: lambda l, b: jnp.sum(w * jnp.tanh(fn(l, b)))
  got = jax.grad(f(add_shared_bias), (0, 1))(logits, bias)
  want = jax.grad(f(jnp.add), (0, 1))(logits, bias)
  np.testing.assert_allclose(add_shared_bias(logits, bias), logits + bias)
  for g, r in zip(got, want):
    assert g.shape == r.shape
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_causal_blocks_equal_full_causal_attention():
  # Packed rows with padding, a bias and gradients: skipping the masked upper-triangle blocks
  # changes nothing for queries that may attend (padding queries are fully masked either way).
  seg = jnp.array([[1] * 5 + [2] * 6 + [0] * 1, [1] * 12], jnp.int32)
  mask = make_mask(seg, seg, causal=True)
  q, k, v, w = (jax.random.normal(jax.random.key(i), (2, 2, 12, 4)) for i in range(4))  # BxHxLxD
  bias = jax.random.normal(jax.random.key(9), (1, 2, 12, 12))
  drop = nnx.Dropout(0.0)

  @functools.partial(jax.jit, static_argnums=0)  # one program per blocks value, not op by op
  def f(blocks):
    def loss(q, k, v, bias):
      out = heads_major_attention(q, k, v, mask=mask, bias=bias, scale=0.5, dropout=drop,
                                  dropout_key=None, dtype=jnp.float32, causal_blocks=blocks)
      return jnp.sum(w * out * (seg > 0)[:, None, :, None]), out
    return jax.value_and_grad(loss, (0, 1, 2, 3), has_aux=True)(q, k, v, bias)

  (_, full), full_grads = f(1)
  for blocks in (2, 3, 4):
    (_, out), grads = f(blocks)
    real = np.asarray(seg > 0)
    np.testing.assert_allclose(np.swapaxes(np.asarray(out), 1, 2)[real],
                               np.swapaxes(np.asarray(full), 1, 2)[real], atol=1e-5)
    for g, want in zip(grads, full_grads):
      np.testing.assert_allclose(g, want, atol=1e-5)
  with pytest.raises(ValueError, match="causal_blocks=5"):
    f(5)


def test_causal_attention_blocks():
  assert [causal_attention_blocks(n) for n in (64, 128, 256, 384, 1024)] == [1, 1, 2, 3, 8]


def test_kv_cache_matches_full_attention():
  attn = _attn()
  x = jax.random.normal(jax.random.key(4), (2, 6, 32))
  seg = jnp.ones((2, 6), jnp.int32)
  full, _ = attn(x, mask=make_mask(seg, seg, causal=True))
  cache = LayerCaches.zeros(1, 2, 8, 4, 8, jnp.float32)
  kv = cache.kv[0]
  outs = []
  # Prefill 3 tokens, then one at a time.
  for start, end in ((0, 3), (3, 4), (4, 5), (5, 6)):
    cache, mask = cache.step_mask(seg[:, start:end])
    out, kv = attn(x[:, start:end], mask=mask, cache=kv, cache_index=cache.index)
    cache = cache._replace(index=cache.index + end - start)
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
