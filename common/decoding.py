"""Autoregressive decoding with a KV cache, shared by GPT generation and T5 inference.

Greedy decoding and sampling (`generate`) and beam search (`beam_search`, T5X's algorithm with
its length penalty). A model plugs in through `step_fn(tokens_BxT, positions_BxT,
segment_ids_BxT, cache) -> (logits_BxTxV, cache)`. Prompts are left-padded so every row writes
the same cache slot each step; pads carry segment id 0 and are never attended to, so ragged
prompts in one batch decode exactly as they would alone. The loop is a `lax.while_loop` inside
one jitted function. Sampling is keyed by row id and position (`sampling_logits`), so a
sampled output does not depend on its batch; ids past the tokenizer's vocabulary are never
produced (`mask_padded_vocab`); `predict_batches` runs a list of inputs batch by batch.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


def left_pad(prompts: list[list[int]], pad_id: int = 0, length: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
  """Ragged token lists -> (tokens [B, P], mask [B, P]) right-aligned at P."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt must have at least one token")
  length = length or max(len(p) for p in prompts)
  if max(len(p) for p in prompts) > length:
    raise ValueError(f"a prompt has {max(len(p) for p in prompts)} tokens, more than {length}")
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, length - len(p):] = p
    mask[i, length - len(p):] = 1
  return tokens, mask


def filter_logits(logits_BxV: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Top-k, then top-p (nucleus: the smallest set of tokens whose probability reaches p)."""
  neg = jnp.finfo(logits_BxV.dtype).min
  if top_k > 0:
    kth = jax.lax.top_k(logits_BxV, top_k)[0][..., -1:]
    logits_BxV = jnp.where(logits_BxV < kth, neg, logits_BxV)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits_BxV, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    keep = before < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold, neg, logits_BxV)
  return logits_BxV


def mask_padded_vocab(logits_BxV: jax.Array, vocab_size: int | None,
                      fill: float | None = None) -> jax.Array:
  """Logits of ids >= `vocab_size` set to `fill` (default: the dtype's lowest value): embedding
  tables are padded to a multiple of 128 for speed, and those ids decode to nothing."""
  if vocab_size is None or vocab_size >= logits_BxV.shape[-1]:
    return logits_BxV
  fill = jnp.finfo(logits_BxV.dtype).min if fill is None else fill
  return jnp.where(jnp.arange(logits_BxV.shape[-1]) < vocab_size, logits_BxV, fill)


def row_keys(key: jax.Array, row_ids_B: jax.Array) -> jax.Array:
  """One sampling key per row: `key` folded with the row's id (its index among all inputs)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(row_ids_B)


def sampling_logits(logits_BxV: jax.Array, keys_B: jax.Array, positions_B: jax.Array, *,
                    temperature: float, top_k: int, top_p: float,
                    vocab_size: int | None = None) -> jax.Array:
  """Logits whose argmax is a sample of the filtered, tempered distribution (Gumbel-max).

  Row b's noise is keyed by fold_in(keys_B[b], positions_B[b]), the position the token fills:
  a sample depends on its row's key and context only, never on the batch size, the padding or
  the other rows.
  """
  logits = filter_logits(mask_padded_vocab(logits_BxV, vocab_size).astype(jnp.float32)
                         / temperature, top_k=top_k, top_p=top_p)
  gumbel = lambda k, p: jax.random.gumbel(jax.random.fold_in(k, p), logits.shape[-1:])
  return logits + jax.vmap(gumbel)(keys_B, positions_B)


def sample_token(logits_BxV: jax.Array, keys_B: jax.Array, positions_B: jax.Array, *,
                 temperature: float, top_k: int, top_p: float,
                 vocab_size: int | None = None) -> jax.Array:
  """Greedy when temperature == 0, else a sample (`sampling_logits`); never a padded id."""
  if temperature == 0.0:
    return jnp.argmax(mask_padded_vocab(logits_BxV, vocab_size), axis=-1).astype(jnp.int32)
  return jnp.argmax(sampling_logits(logits_BxV, keys_B, positions_B, temperature=temperature,
                                    top_k=top_k, top_p=top_p, vocab_size=vocab_size),
                    axis=-1).astype(jnp.int32)


def phase_ends(max_new_tokens: int, phases: int, min_steps: int = 16) -> list[int]:
  """Ends (in new tokens) of up to `phases` equal decoding phases of >= `min_steps` steps."""
  n = max(1, min(phases, max_new_tokens // min_steps))
  return [round(max_new_tokens * (j + 1) / n) for j in range(n)]


def generate(step_fn: StepFn, cache: Any, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, *,
             max_new_tokens: int, key: jax.Array, eos_id: int, pad_id: int = 0,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             vocab_size: int | None = None, row_ids_B: jax.Array | None = None,
             phase_ends: list[int] | None = None) -> tuple[jax.Array, jax.Array]:
  """Prefills the prompt, then decodes one token per step until EOS or `max_new_tokens`.

  Returns (tokens [B, max_new_tokens] padded with `pad_id` after EOS, lengths [B] counting
  the EOS). Traceable: call it inside `jax.jit` with the sampling options static. Sampling
  keys row b by `row_keys(key, row_ids_B)` (default ids 0..B-1) and the token's position.

  `phase_ends` (from `phase_ends()`): decode in phases, one loop each, with the cache grown by
  `cache.extend(slots)` between them. The cache passed in then holds the prompt plus the first
  phase's tokens, so early steps attend over a short buffer instead of the full length (each
  phase compiles its own loop body).
  """
  ends = phase_ends or [max_new_tokens]
  if ends[-1] != max_new_tokens or any(b <= a for a, b in zip([0] + ends, ends)):
    raise ValueError(f"phase_ends={ends} must increase to max_new_tokens={max_new_tokens}")
  batch = prompt_BxP.shape[0]
  positions = jnp.maximum(jnp.cumsum(prompt_mask_BxP, axis=1) - 1, 0)
  logits, cache = step_fn(prompt_BxP, positions, prompt_mask_BxP, cache)
  next_pos = positions[:, -1] + 1
  keys_B = row_keys(key, jnp.arange(batch) if row_ids_B is None else row_ids_B)
  out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
  done = jnp.zeros((batch,), bool)
  lengths = jnp.zeros((batch,), jnp.int32)

  def body(carry):
    i, last_logits, cache, out, done, lengths = carry
    tok = sample_token(last_logits, keys_B, next_pos + i, temperature=temperature, top_k=top_k,
                       top_p=top_p, vocab_size=vocab_size)
    tok = jnp.where(done, pad_id, tok)
    out = out.at[:, i].set(tok)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | (tok == eos_id)
    ones = jnp.ones((batch, 1), jnp.int32)
    logits, cache = step_fn(tok[:, None], (next_pos + i)[:, None], ones, cache)
    return i + 1, logits[:, -1], cache, out, done, lengths

  def cond(carry):
    i, *_, done, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  carry = (jnp.zeros((), jnp.int32), logits[:, -1], cache, out, done, lengths)
  for j, end in enumerate(ends):
    if j:
      carry = carry[:2] + (carry[2].extend(end - ends[j - 1]),) + carry[3:]
    carry = jax.lax.while_loop(lambda c, end=end: cond(c) & (c[0] < end), body, carry)
  _, _, _, out, _, lengths = carry
  return out, lengths


_NEG = -1e9  # score of an impossible hypothesis (finite: scores are divided by penalties)


def brevity_penalty(length: jax.Array | int, alpha: float) -> jax.Array:
  """GNMT/T5X length penalty ((5 + length) / 6) ** alpha; scores are log-prob / penalty."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def reorder_cache(cache: Any, rows: jax.Array) -> Any:
  """Selects batch rows `rows` of a decoding cache (beam search follows its parent beams).

  Every non-scalar leaf of the cache pytree has the batch axis first (`LayerCaches` does).
  """
  if cache is None:
    return None
  return jax.tree.map(lambda a: jnp.take(a, rows, axis=0) if a.ndim else a, cache)


def beam_search(step_fn: StepFn, cache: Any, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                *, beam_size: int, max_new_tokens: int, eos_id: int, alpha: float = 0.6,
                pad_id: int = 0, vocab_size: int | None = None
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Beam search as in T5X: `beam_size` live hypotheses, the best `beam_size` finished ones.

  Each step extends every live beam by every token, keeps the 2K best candidates, moves
  those ending in EOS to the finished set (scored log-prob / brevity_penalty(length, alpha))
  and the K best others stay live. It stops once no live beam, even at the longest length,
  could beat the worst finished one, or after `max_new_tokens`, when live hypotheses compete
  with the finished ones. With beam_size=1 and alpha=0 this is greedy decoding.

  `cache` must hold B * beam_size rows (row b * K + k is beam k of example b); rows that the
  step function reads from elsewhere (T5's encoder output) must be repeated likewise.
  Returns (tokens [B, K, max_new_tokens] best first, EOS included, then `pad_id`;
  lengths [B, K] counting the EOS; scores [B, K]). Traceable: call it inside `jax.jit`.
  """
  batch, k = prompt_BxP.shape[0], beam_size
  if k < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}")
  n = max_new_tokens
  rep = lambda x: jnp.repeat(x, k, axis=0)
  positions = jnp.maximum(jnp.cumsum(prompt_mask_BxP, axis=1) - 1, 0)
  logits, cache = step_fn(rep(prompt_BxP), rep(positions), rep(prompt_mask_BxP), cache)
  next_pos = rep(positions)[:, -1] + 1

  def log_probs(logits_NxV):
    logits_NxV = mask_padded_vocab(logits_NxV.astype(jnp.float32), vocab_size, _NEG)
    return jax.nn.log_softmax(logits_NxV, axis=-1)

  def take(x, idx):  # x [B, M, ...], idx [B, J] -> [B, J, ...]
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

  def body(carry):
    i, last_logits, cache, alive_seq, alive_lp, fin_seq, fin_score, fin_len = carry
    lp = log_probs(last_logits).reshape(batch, k, -1)
    vocab = lp.shape[-1]
    cand_lp, cand_idx = jax.lax.top_k((alive_lp[:, :, None] + lp).reshape(batch, -1), 2 * k)
    parent, tok = cand_idx // vocab, (cand_idx % vocab).astype(jnp.int32)
    seqs = take(alive_seq, parent).at[:, :, i].set(tok)
    is_eos = tok == eos_id
    # Finished: the best K of the old finished set and this step's EOS candidates.
    new_score = jnp.where(is_eos & (cand_lp > _NEG / 2), cand_lp / brevity_penalty(i + 1, alpha),
                          _NEG)
    fin_score, idx = jax.lax.top_k(jnp.concatenate([fin_score, new_score], 1), k)
    fin_seq = take(jnp.concatenate([fin_seq, seqs], 1), idx)
    fin_len = take(jnp.concatenate([fin_len, jnp.full_like(new_score, i + 1, jnp.int32)], 1),
                   idx)
    # Live: the best K candidates that did not end.
    alive_lp, idx = jax.lax.top_k(jnp.where(is_eos, _NEG, cand_lp), k)
    alive_seq, parent, tok = take(seqs, idx), take(parent, idx), take(tok, idx)
    cache = reorder_cache(cache, (jnp.arange(batch)[:, None] * k + parent).reshape(-1))
    logits, cache = step_fn(tok.reshape(-1, 1), (next_pos + i)[:, None],
                            jnp.ones((batch * k, 1), jnp.int32), cache)
    return i + 1, logits[:, -1], cache, alive_seq, alive_lp, fin_seq, fin_score, fin_len

  def cond(carry):
    i, _, _, _, alive_lp, _, fin_score, _ = carry
    best_alive = alive_lp[:, 0] / brevity_penalty(n, alpha)  # alive scores only fall
    return (i < n) & ~jnp.all(fin_score[:, -1] > best_alive)

  alive_lp = jnp.tile(jnp.asarray([0.0] + [_NEG] * (k - 1), jnp.float32), (batch, 1))
  seq = jnp.full((batch, k, n), pad_id, jnp.int32)
  carry = (jnp.zeros((), jnp.int32), logits[:, -1], cache, seq, alive_lp, seq,
           jnp.full((batch, k), _NEG, jnp.float32), jnp.zeros((batch, k), jnp.int32))
  i, _, _, alive_seq, alive_lp, fin_seq, fin_score, fin_len = jax.lax.while_loop(
      cond, body, carry)
  # Live hypotheses that reached the length limit compete with the finished ones (as in
  # Hugging Face's beam search; T5X returns live ones only when nothing finished).
  alive_score = jnp.where(alive_lp > _NEG / 2, alive_lp / brevity_penalty(i, alpha), _NEG)
  scores, idx = jax.lax.top_k(jnp.concatenate([fin_score, alive_score], 1), k)
  tokens = take(jnp.concatenate([fin_seq, alive_seq], 1), idx)
  lengths = take(jnp.concatenate([fin_len, jnp.full_like(fin_len, i)], 1), idx)
  return tokens, lengths, scores


def predict_batches(inputs: Sequence[Any], rows: int,
                    decode_batch: Callable[[list[Any], int], tuple[Any, Any]], *,
                    eos_id: int) -> list[list[int]]:
  """Each input's output ids (EOS dropped), decoded `rows` inputs at a time.

  `decode_batch(batch, start)` decodes inputs start.. start + rows - 1 (their row ids, which
  key the sampling) to (tokens [rows, N], lengths [rows] counting the EOS). The last batch is
  filled up with copies of its first input, decoded and dropped, so that every batch has the
  same shape and one compilation serves them all.
  """
  out: list[list[int]] = []
  for start in range(0, len(inputs), rows):
    chunk = list(inputs[start:start + rows])
    real = len(chunk)
    tokens, lengths = jax.device_get(decode_batch(chunk + chunk[:1] * (rows - real), start))
    out += [[int(t) for t in row[:n] if t != eos_id]
            for row, n in zip(tokens[:real], lengths[:real])]
  return out
