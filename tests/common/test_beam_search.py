"""Beam search on toy step functions: beam 1 is greedy, EOS ends hypotheses, beams follow
their parents' caches, and a wider beam finds better sequences than greedy."""

import jax
import jax.numpy as jnp
import numpy as np

from common import decoding

V, EOS = 12, 1


def _step_fn(table):
  """Next-token logits from (last token, running sum of tokens) — the sum is the 'cache',
  so a beam that reads another beam's cache gets different logits."""
  table = jnp.asarray(table)

  def step_fn(tokens, positions, segment_ids, cache):
    del positions, segment_ids
    cache = cache + tokens.sum(axis=1)
    logits = table[tokens[:, -1], cache % table.shape[1]]
    return logits[:, None], cache
  return step_fn


def _table(seed):
  return np.asarray(jax.random.normal(jax.random.key(seed), (V, 7, V))) * 3.0


def test_beam_one_without_length_penalty_is_greedy():
  for seed in range(4):
    step_fn = _step_fn(_table(seed))
    prompt = jnp.asarray([[2], [5], [7]], jnp.int32)
    mask = jnp.ones_like(prompt)
    cache = jnp.zeros((3,), jnp.int32)
    greedy, g_len = decoding.generate(step_fn, cache, prompt, mask, max_new_tokens=6,
                                      key=jax.random.key(0), eos_id=EOS)
    beam, b_len, _ = decoding.beam_search(step_fn, cache, prompt, mask, beam_size=1,
                                          max_new_tokens=6, eos_id=EOS, alpha=0.0)
    np.testing.assert_array_equal(beam[:, 0], greedy)
    np.testing.assert_array_equal(b_len[:, 0], g_len)


def _score(table, prompt_token, seq, alpha):
  """Length-normalised log-probability of `seq` under the toy model (reference)."""
  last, total, lp = prompt_token, prompt_token, 0.0
  for t in seq:
    logits = table[last, total % table.shape[1]]
    lp += float(jax.nn.log_softmax(jnp.asarray(logits))[t])
    last, total = t, total + t
  return lp / float(decoding.brevity_penalty(len(seq), alpha))


def test_beam_scores_are_exact_and_beat_greedy():
  table = _table(11)
  step_fn = _step_fn(table)
  prompt = jnp.asarray([[3], [4]], jnp.int32)
  mask = jnp.ones_like(prompt)
  tokens, lengths, scores = decoding.beam_search(
      step_fn, jnp.zeros((8,), jnp.int32), prompt, mask, beam_size=4, max_new_tokens=5,
      eos_id=EOS, alpha=0.6)
  greedy, g_len = decoding.generate(step_fn, jnp.zeros((2,), jnp.int32), prompt, mask,
                                    max_new_tokens=5, key=jax.random.key(0), eos_id=EOS)
  for b in range(2):
    assert np.all(np.diff(np.asarray(scores[b])) <= 1e-6)  # best first
    seq = [int(t) for t in tokens[b, 0, :lengths[b, 0]]]
    np.testing.assert_allclose(scores[b, 0], _score(table, int(prompt[b, 0]), seq, 0.6),
                               rtol=1e-4)
    assert (np.asarray(tokens[b, 0, lengths[b, 0]:]) == 0).all()  # padding after the end
    g = [int(t) for t in greedy[b, :g_len[b]]]
    assert scores[b, 0] >= _score(table, int(prompt[b, 0]), g, 0.6) - 1e-5


def test_eos_stops_a_sequence():
  """Always predicts last + 1; after token 4 comes EOS (as in the generate test)."""
  def step_fn(tokens, positions, segment_ids, cache):
    nxt = jnp.where(tokens == 4, EOS, (tokens + 1) % V)
    return jax.nn.one_hot(nxt, V) * 10.0, cache

  prompt = jnp.asarray([[2], [6]], jnp.int32)
  tokens, lengths, _ = decoding.beam_search(step_fn, None, prompt, jnp.ones_like(prompt),
                                            beam_size=3, max_new_tokens=5, eos_id=EOS)
  np.testing.assert_array_equal(tokens[0, 0], [3, 4, EOS, 0, 0])
  assert lengths[0, 0] == 3
  np.testing.assert_array_equal(tokens[1, 0], [7, 8, 9, 10, 11])  # no EOS within 5 tokens
  assert lengths[1, 0] == 5
