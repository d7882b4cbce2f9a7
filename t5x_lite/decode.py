"""Batched T5 inference: the encoder runs once, the decoder step by step over a KV cache
(plus cross-attention keys/values computed once), with beam search, greedy or sampling from
`common.decoding`."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from common import decoding
from common.partitioning import Partitioner
from common.data.seq2seq import pad_batch
from t5x_lite.network import T5, IncrementalDecoder


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "max_decode_len", "beam_size", "alpha", "temperature", "top_k", "top_p",
    "eos_id", "vocab_size"))
def _decode_jit(graphdef, params, enc_tokens_BxS, enc_segment_ids_BxS, key, *,
                max_decode_len: int, beam_size: int, alpha: float, temperature: float,
                top_k: int, top_p: float, eos_id: int, vocab_size: int | None):
  net: T5 = nnx.merge(graphdef, params)
  batch = enc_tokens_BxS.shape[0]
  rows = batch * beam_size
  encoded = net.encode(enc_tokens_BxS, enc_segment_ids_BxS)
  enc_seg = enc_segment_ids_BxS
  if beam_size > 1:
    encoded, enc_seg = (jnp.repeat(x, beam_size, axis=0) for x in (encoded, enc_seg))
  decoder = IncrementalDecoder(net, encoded, enc_seg)
  cache = decoder.init_cache(rows, max_decode_len + 1)

  def step_fn(tokens, positions, segment_ids, cache):
    del positions  # relative positions come from the cache index
    return decoder(tokens, segment_ids, cache)

  start = jnp.zeros((batch, 1), jnp.int32)  # T5's decoder start token is id 0
  start_mask = jnp.ones((batch, 1), jnp.int32)
  if beam_size > 1:
    tokens, lengths, _ = decoding.beam_search(
        step_fn, cache, start, start_mask, beam_size=beam_size, max_new_tokens=max_decode_len,
        eos_id=eos_id, alpha=alpha, vocab_size=vocab_size)
    return tokens[:, 0], lengths[:, 0]
  return decoding.generate(step_fn, cache, start, start_mask, max_new_tokens=max_decode_len,
                           key=key, eos_id=eos_id, temperature=temperature, top_k=top_k,
                           top_p=top_p, vocab_size=vocab_size)


def predict_ids(graphdef: Any, params: Any, inputs: list[np.ndarray], *, input_len: int,
                max_decode_len: int, batch_size: int, eos_id: int, beam_size: int = 1,
                alpha: float = 0.6, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, vocab_size: int | None = None, seed: int = 0,
                partitioner: Partitioner | None = None) -> list[list[int]]:
  """Output ids (without EOS) for each encoder input (ids ending in EOS).

  Beam search when beam_size > 1, else greedy (temperature 0) or sampling;
  batches are padded to `batch_size` rows and `input_len` tokens, so one compilation serves
  every batch. With `partitioner`, rows are spread over its data axes and decoding runs in
  its mesh + rules.
  """
  if beam_size < 1 or batch_size < 1:
    raise ValueError(f"beam_size and batch_size must be >= 1, got {beam_size}, {batch_size}")
  if temperature > 0 and beam_size > 1:
    raise ValueError("sampling (temperature > 0) decodes one sequence per input; use "
                     "beam_size=1")
  if partitioner is not None:
    partitioner.check_batch(batch_size, "inference batch_size")
  out: list[list[int]] = []
  key = jax.random.key(seed)
  for start in range(0, len(inputs), batch_size):
    chunk = list(inputs[start:start + batch_size])
    real = len(chunk)
    chunk += [np.asarray([eos_id], np.int32)] * (batch_size - real)
    feats = pad_batch([{"inputs": x, "targets": np.zeros(0, np.int32)} for x in chunk],
                      input_len, 1)
    key, sub = jax.random.split(key)
    args = (jnp.asarray(feats["encoder_input_tokens"]), jnp.asarray(feats["encoder_segment_ids"]))
    context = contextlib.nullcontext()
    if partitioner is not None:
      args = tuple(partitioner.global_batch({"x": np.asarray(a)})["x"] for a in args)
      context = partitioner.context()
    with context:
      tokens, lengths = _decode_jit(graphdef, params, *args, sub, max_decode_len=max_decode_len,
                                    beam_size=beam_size, alpha=alpha, temperature=temperature,
                                    top_k=top_k, top_p=top_p, eos_id=eos_id,
                                    vocab_size=vocab_size)
    tokens, lengths = jax.device_get((tokens, lengths))
    for row, n in list(zip(tokens, lengths))[:real]:
      out.append([int(t) for t in row[:n] if t != eos_id])
  return out
