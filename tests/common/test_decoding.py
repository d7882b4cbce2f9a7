"""Sampling filters, the sampler, the padded-vocab mask, the decode loop on a toy step
function and the batched predict loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import decoding


def _keys(seed: int, n: int) -> jax.Array:
  return decoding.row_keys(jax.random.key(seed), jnp.arange(n))


def test_top_k_one_is_greedy():
  logits = jax.random.normal(jax.random.key(0), (4, 50))
  for seed in range(3):
    tok = decoding.sample_token(logits, _keys(seed, 4), jnp.zeros(4, jnp.int32),
                                temperature=1.0, top_k=1, top_p=1.0)
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
    tok = decoding.sample_token(logits, _keys(0, 2), jnp.zeros(2, jnp.int32),
                                temperature=temperature, top_k=0, top_p=1.0, vocab_size=8)
    assert np.all(np.asarray(tok) < 8)


def test_padded_vocab_mask():
  logits = jnp.arange(6, dtype=jnp.float32)[None]
  lowest = jnp.finfo(jnp.float32).min
  np.testing.assert_array_equal(decoding.mask_padded_vocab(logits, 4),
                                [[0, 1, 2, 3, lowest, lowest]])
  np.testing.assert_array_equal(decoding.mask_padded_vocab(logits, 4, -1e9),
                                [[0, 1, 2, 3, -1e9, -1e9]])
  assert decoding.mask_padded_vocab(logits, None) is logits
  assert decoding.mask_padded_vocab(logits, 6) is logits


def test_seeded_sampling_keeps_the_nucleus_and_follows_the_distribution():
  probs = np.array([0.5, 0.3, 0.15, 0.05])
  n = 4000
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (n, 4))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(n))

  @functools.partial(jax.jit, static_argnames=("top_k", "top_p"))
  def sample(logits, keys, top_k, top_p):  # arguments, not constants: XLA would fold the sort
    return jnp.argmax(decoding.sampling_logits(logits, keys, jnp.zeros(n, jnp.int32),
                                               temperature=1.0, top_k=top_k, top_p=top_p,
                                               vocab_size=None), -1)
  draw = lambda **kw: np.asarray(sample(logits, keys, **kw))
  counts = np.bincount(draw(top_k=0, top_p=1.0), minlength=4) / n
  np.testing.assert_allclose(counts, probs, atol=0.03)
  assert set(draw(top_k=0, top_p=0.75)) == {0, 1}  # 0.5 + 0.3 is the smallest set >= 0.75
  assert set(draw(top_k=3, top_p=0.85)) == {0, 1, 2}


def test_sampled_rows_depend_on_their_row_id_not_their_batch():
  """A row decodes the same tokens alone as in a batch, given the same row id (the sampling
  semantics GPT generation and T5 inference share)."""
  vocab = 16

  def step_fn(tokens, positions, segment_ids, cache):  # flat logits: every token possible
    return jnp.zeros(tokens.shape + (vocab,)), cache

  prompt, mask = (jnp.asarray(a) for a in decoding.left_pad([[2], [3, 4], [5]]))
  kw = dict(max_new_tokens=6, key=jax.random.key(7), eos_id=-1, temperature=1.0)
  batch, _ = decoding.generate(step_fn, None, prompt, mask, **kw)
  for i in range(3):
    alone, _ = decoding.generate(step_fn, None, prompt[i:i + 1], mask[i:i + 1],
                                 row_ids_B=jnp.asarray([i]), **kw)
    np.testing.assert_array_equal(alone[0], batch[i])
  assert len({tuple(np.asarray(r)) for r in batch}) == 3  # rows draw different noise


def test_predict_batches_fills_the_last_batch_and_drops_eos():
  seen = []

  def decode_batch(chunk, start):
    seen.append((list(chunk), start))
    tokens = np.asarray([[x, x + 1, 9, 0] for x in chunk])
    return tokens, np.asarray([3 if x % 2 else 2 for x in chunk])

  out = decoding.predict_batches([10, 11, 12, 13, 14], 2, decode_batch, eos_id=9)
  assert seen == [([10, 11], 0), ([12, 13], 2), ([14, 14], 4)]
  assert out == [[10, 11], [11, 12], [12, 13], [13, 14], [14, 15]]


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
