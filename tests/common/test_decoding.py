"""Sampling filters and the decode loop on a toy step function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import decoding


def test_top_k_one_is_greedy():
  logits = jax.random.normal(jax.random.key(0), (4, 50))
  for seed in range(3):
    tok = decoding.sample_token(logits, jax.random.key(seed), temperature=1.0, top_k=1, top_p=1.0)
    np.testing.assert_array_equal(tok, jnp.argmax(logits, -1))


def test_top_p_keeps_smallest_set_reaching_p():
  probs = jnp.array([[0.5, 0.3, 0.15, 0.05]])
  kept = decoding.filter_logits(jnp.log(probs), top_p=0.8) > -1e30
  np.testing.assert_array_equal(kept, [[True, True, False, False]])  # 0.5+0.3 reaches 0.8
  kept = decoding.filter_logits(jnp.log(probs), top_p=0.81) > -1e30
  np.testing.assert_array_equal(kept, [[True, True, True, False]])
  kept = decoding.filter_logits(jnp.log(probs), top_p=0.4) > -1e30
  np.testing.assert_array_equal(kept, [[True, False, False, False]])


def test_left_pad_and_errors():
  tokens, mask = decoding.left_pad([[5, 6, 7], [8]])
  np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 8]])
  np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
  with pytest.raises(ValueError, match="at least one token"):
    decoding.left_pad([[1], []])


def test_generate_stops_at_eos_and_pads():
  """A step function that always predicts last_token + 1; EOS (id 1) ends a row."""
  vocab = 20

  def step_fn(tokens, positions, segment_ids, cache):
    nxt = (tokens + 1) % vocab
    nxt = jnp.where(tokens == 4, 1, nxt)  # after 4 comes EOS
    return jax.nn.one_hot(nxt, vocab) * 10, cache

  prompt, mask = decoding.left_pad([[2], [10, 11]])
  out, lengths = decoding.generate(step_fn, None, jnp.asarray(prompt), jnp.asarray(mask),
                                   max_new_tokens=5, key=jax.random.key(0), eos_id=1)
  np.testing.assert_array_equal(out, [[3, 4, 1, 0, 0], [12, 13, 14, 15, 16]])
  np.testing.assert_array_equal(lengths, [3, 5])


def test_ids_past_the_tokenizer_vocabulary_are_never_sampled():
  logits = jnp.zeros((2, 10)).at[:, 8:].set(100.0)  # padded embedding rows would win
  for temperature in (0.0, 1.0):
    tok = decoding.sample_token(logits, jax.random.key(0), temperature=temperature, top_k=0,
                                top_p=1.0, vocab_size=8)
    assert np.all(np.asarray(tok) < 8)


class _GrowingCache:
  """A toy cache whose buffer grows by `extend`; a step writes its tokens at `index`."""

  def __init__(self, buf, index):
    self.buf, self.index = buf, index

  def extend(self, slots):
    return _GrowingCache(jnp.pad(self.buf, ((0, 0), (0, slots))), self.index)


jax.tree_util.register_pytree_node(
    _GrowingCache, lambda c: ((c.buf, c.index), None), lambda _, xs: _GrowingCache(*xs))


def test_phased_decoding_grows_the_cache_and_keeps_the_tokens():
  """generate with phase_ends [2, 5, 7] decodes the same tokens as one phase, stops at EOS
  across a phase boundary, and the cache ends as long as prompt + max_new_tokens."""
  vocab, prompt_len = 20, 2
  lengths_seen = []

  def step_fn(tokens, positions, segment_ids, cache):
    n = tokens.shape[1]
    lengths_seen.append(cache.buf.shape[1])
    buf = jax.lax.dynamic_update_slice(cache.buf, tokens, (0, cache.index))
    nxt = jnp.where(tokens[:, -1:] == 9, 1, (tokens[:, -1:] + 1) % vocab)  # EOS after 9
    return jax.nn.one_hot(nxt, vocab) * 10, _GrowingCache(buf, cache.index + n)

  prompt, mask = decoding.left_pad([[2, 3], [5, 6]])
  kw = dict(max_new_tokens=7, key=jax.random.key(0), eos_id=1)
  whole = _GrowingCache(jnp.zeros((2, prompt_len + 7), jnp.int32), 0)
  want = decoding.generate(step_fn, whole, jnp.asarray(prompt), jnp.asarray(mask), **kw)
  lengths_seen.clear()
  first = _GrowingCache(jnp.zeros((2, prompt_len + 2), jnp.int32), 0)
  got = decoding.generate(step_fn, first, jnp.asarray(prompt), jnp.asarray(mask),
                          phase_ends=[2, 5, 7], **kw)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  np.testing.assert_array_equal(got[0], [[4, 5, 6, 7, 8, 9, 1], [7, 8, 9, 1, 0, 0, 0]])
  assert lengths_seen == [4, 4, 7, 9]  # prefill, then one traced body per phase
  with pytest.raises(ValueError, match="must increase to max_new_tokens=7"):
    decoding.generate(step_fn, first, jnp.asarray(prompt), jnp.asarray(mask),
                      phase_ends=[2, 2, 7], **kw)


def test_phase_ends():
  assert decoding.phase_ends(128, 4) == [32, 64, 96, 128]
  assert decoding.phase_ends(40, 4) == [20, 40]  # phases of at least 16 steps
  assert decoding.phase_ends(8, 4) == [8]
  assert decoding.phase_ends(100, 3) == [33, 67, 100]
