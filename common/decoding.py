"""Autoregressive decoding with a KV cache, shared by GPT generation and T5 inference.

A model plugs in through `step_fn(tokens_BxT, positions_BxT, segment_ids_BxT, cache) ->
(logits_BxTxV, cache)`. Prompts are left-padded so every row writes the same cache slot each
step; pads carry segment id 0 and are never attended to, so ragged prompts in one batch decode
exactly as they would alone. The loop is a `lax.while_loop` inside one jitted function.
"""

from __future__ import annotations

from typing import Any, Callable

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


def sample_token(logits_BxV: jax.Array, key: jax.Array, *, temperature: float, top_k: int,
                 top_p: float, vocab_size: int | None = None) -> jax.Array:
  """Greedy when temperature == 0, else sampling from the filtered, tempered distribution.

  `vocab_size` excludes the embedding rows past the tokenizer's vocabulary (tables are padded
  to a multiple of 128 for speed; those ids decode to nothing).
  """
  if vocab_size is not None and vocab_size < logits_BxV.shape[-1]:
    valid = jnp.arange(logits_BxV.shape[-1]) < vocab_size
    logits_BxV = jnp.where(valid, logits_BxV, jnp.finfo(logits_BxV.dtype).min)
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits_BxV.astype(jnp.float32) / temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(step_fn: StepFn, cache: Any, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, *,
             max_new_tokens: int, key: jax.Array, eos_id: int, pad_id: int = 0,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             vocab_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Prefills the prompt, then decodes one token per step until EOS or `max_new_tokens`.

  Returns (tokens [B, max_new_tokens] padded with `pad_id` after EOS, lengths [B] counting
  the EOS). Traceable: call it inside `jax.jit` with the sampling options static.
  """
  batch = prompt_BxP.shape[0]
  positions = jnp.maximum(jnp.cumsum(prompt_mask_BxP, axis=1) - 1, 0)
  logits, cache = step_fn(prompt_BxP, positions, prompt_mask_BxP, cache)
  next_pos = positions[:, -1] + 1
  out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
  done = jnp.zeros((batch,), bool)
  lengths = jnp.zeros((batch,), jnp.int32)

  def body(carry):
    i, last_logits, cache, out, done, lengths, key = carry
    key, sub = jax.random.split(key)
    tok = sample_token(last_logits, sub, temperature=temperature, top_k=top_k, top_p=top_p,
                       vocab_size=vocab_size)
    tok = jnp.where(done, pad_id, tok)
    out = out.at[:, i].set(tok)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | (tok == eos_id)
    ones = jnp.ones((batch, 1), jnp.int32)
    logits, cache = step_fn(tok[:, None], (next_pos + i)[:, None], ones, cache)
    return i + 1, logits[:, -1], cache, out, done, lengths, key

  def cond(carry):
    i, *_, done, _, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  carry = (jnp.zeros((), jnp.int32), logits[:, -1], cache, out, done, lengths, key)
  _, _, _, out, _, lengths, _ = jax.lax.while_loop(cond, body, carry)
  return out, lengths
