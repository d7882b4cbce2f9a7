"""Text generation from a GPT network with the shared KV-cache decoder (`common/decoding.py`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from common import decoding
from common.vocab import Vocabulary
from gpt_flax.network import GPT


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_id", "temperature",
                                             "top_k", "top_p", "vocab_size"))
def _generate_jit(graphdef, params, prompt_BxP, mask_BxP, key, *, max_new_tokens: int,
                  eos_id: int, temperature: float, top_k: int, top_p: float,
                  vocab_size: int | None):
  net: GPT = nnx.merge(graphdef, params)
  cache = net.init_cache(prompt_BxP.shape[0], prompt_BxP.shape[1] + max_new_tokens)

  def step_fn(tokens, positions, segment_ids, cache):
    return net(tokens, positions_BxL=positions, segment_ids_BxL=segment_ids, cache=cache)

  return decoding.generate(step_fn, cache, prompt_BxP, mask_BxP, max_new_tokens=max_new_tokens,
                           key=key, eos_id=eos_id, temperature=temperature, top_k=top_k,
                           top_p=top_p, vocab_size=vocab_size)


def generate_tokens(graphdef, params, prompts: list[list[int]], *, max_len: int,
                    max_new_tokens: int, eos_id: int, seed: int = 0, temperature: float = 0.0,
                    top_k: int = 0, top_p: float = 1.0,
                    vocab_size: int | None = None) -> list[list[int]]:
  """Continuations (without the EOS) of ragged token prompts, decoded in one batch."""
  longest = max((len(p) for p in prompts), default=0)
  if longest + max_new_tokens > max_len:
    raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                     f"context window of {max_len}")
  tokens, mask = decoding.left_pad(prompts)
  out, lengths = _generate_jit(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask),
                               jax.random.key(seed), max_new_tokens=max_new_tokens,
                               eos_id=eos_id, temperature=temperature, top_k=top_k, top_p=top_p,
                               vocab_size=vocab_size)
  out, lengths = jax.device_get((out, lengths))
  return [[int(t) for t in row[:n] if t != eos_id] for row, n in zip(out, lengths)]


def generate_text(graphdef, params, vocab: Vocabulary, prompts: list[str], *, max_len: int,
                  max_new_tokens: int, **kwargs) -> list[str]:
  encoded = [[vocab.bos_id] + vocab.encode(p) for p in prompts]
  outs = generate_tokens(graphdef, params, encoded, max_len=max_len,
                         max_new_tokens=max_new_tokens, eos_id=vocab.eos_id,
                         vocab_size=vocab.vocab_size, **kwargs)
  return [vocab.decode(o) for o in outs]
