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
def _decode_jit(graphdef, params, enc_tokens_BxS, enc_segment_ids_BxS, key, row_ids_B=None, *,
                max_decode_len: int, beam_size: int, alpha: float, temperature: float,
                top_k: int, top_p: float, eos_id: int, vocab_size: int | None):
  """(tokens [B, max_decode_len], lengths [B]): the best beam, or greedy/sampled (sampling
  keyed by `key`, `row_ids_B` and position, as in `decoding.generate`)."""
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
                           top_p=top_p, vocab_size=vocab_size, row_ids_B=row_ids_B)


def predict_ids(graphdef: Any, params: Any, inputs: list[np.ndarray], *, input_len: int,
                max_decode_len: int, batch_size: int, eos_id: int, beam_size: int = 1,
                alpha: float = 0.6, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, vocab_size: int | None = None, seed: int = 0,
                partitioner: Partitioner | None = None) -> list[list[int]]:
  """Output ids (without EOS) for each encoder input (ids ending in EOS).

  Beam search when beam_size > 1, else greedy (temperature 0) or sampling, keyed by `seed`,
  the input's index and position, so an output does not depend on its batch (as GPT's);
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
  key = jax.random.key(seed)

  def decode_batch(chunk: list[np.ndarray], start: int) -> tuple[jax.Array, jax.Array]:
    feats = pad_batch([{"inputs": x, "targets": np.zeros(0, np.int32)} for x in chunk],
                      input_len, 1)
    args = {"tokens": feats["encoder_input_tokens"], "segment_ids": feats["encoder_segment_ids"],
            "row_ids": np.arange(start, start + batch_size, dtype=np.int32)}
    args = (partitioner.global_batch(args) if partitioner is not None
            else {k: jnp.asarray(v) for k, v in args.items()})
    with partitioner.context() if partitioner is not None else contextlib.nullcontext():
      return _decode_jit(graphdef, params, args["tokens"], args["segment_ids"], key,
                         args["row_ids"], max_decode_len=max_decode_len, beam_size=beam_size,
                         alpha=alpha, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_id=eos_id, vocab_size=vocab_size)

  return decoding.predict_batches(inputs, batch_size, decode_batch, eos_id=eos_id)
