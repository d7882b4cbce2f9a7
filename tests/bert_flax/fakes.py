"""Synthetic BERT pretraining batches (packed, masked like the pipeline) for sharding tests and
the accelerator check: no tokenizer or dataset needed."""

from __future__ import annotations

import numpy as np

from bert_flax.masking import MaskingConfig, mask_batch

SPECIAL = np.arange(7, dtype=np.int32)  # pad, eos, unk, bos, [CLS] 4, [SEP] 5, [MASK] 6


def synthetic_batch(cfg, i: int) -> dict[str, np.ndarray]:
  """Rows of two packed `[CLS] A [SEP] B [SEP]` examples and padding, masked like the pipeline."""
  rng = np.random.default_rng([7, i])
  b, length, vocab = cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size
  tokens = rng.integers(7, vocab, (b, length)).astype(np.int32)
  cut = length // 2 - 2
  seg = np.where(np.arange(length) < cut, 1, 2)[None].repeat(b, 0).astype(np.int32)
  seg[:, -3:] = 0
  pos = np.where(np.arange(length) < cut, np.arange(length), np.arange(length) - cut)
  pos = np.broadcast_to(pos, (b, length)).astype(np.int32)
  types = ((pos > 5) & (seg > 0)).astype(np.int32)
  tokens[pos == 0] = 4
  tokens[(pos == 5) | (np.roll(seg, -1, 1) != seg)] = 5
  tokens[seg == 0] = 0
  masking = MaskingConfig(mask_id=6, special_ids=SPECIAL,
                          replacement_ids=np.arange(7, vocab, dtype=np.int32),
                          max_predictions=cfg.pretrain.max_predictions)
  out = mask_batch(tokens, rng, masking)
  nsp_w = ((pos == 0) & (seg > 0)).astype(np.float32)
  out.update(type_ids=types, positions=pos, segment_ids=seg, nsp_weights=nsp_w,
             nsp_labels=(rng.random((b, length)) < 0.5).astype(np.int32) * (nsp_w > 0))
  return out
