"""Scoring in-context answers: candidate log-likelihoods for multiple choice (batched on the
model's mesh), exact match and ROUGE for generation, and the baselines a score is read against."""

from __future__ import annotations

import collections
import functools
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.data.records import Source
from common.rouge import rouge
from common.rundir import LoadedRun
from gpt_flax import generate as gen
from gpt_flax.icl_tasks import Task

LENGTH_NORMS = ("none", "token", "char")
SEQ_BUCKET = 32


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sequence_logprobs(graphdef, params, inputs_BxL, targets_BxL, segment_ids_BxL,
                       weights_BxL):
  """Sum over weighted positions of log p(target | prefix), per row."""
  dtype = nnx.merge(graphdef, params).cfg.dtype
  net = nnx.merge(graphdef, gen.inference_params(params, dtype))
  positions = jnp.broadcast_to(jnp.arange(inputs_BxL.shape[1]), inputs_BxL.shape)
  logits = net(inputs_BxL, positions_BxL=positions, segment_ids_BxL=segment_ids_BxL)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_logp = jnp.take_along_axis(logp, targets_BxL[..., None], axis=-1)[..., 0]
  return jnp.sum(token_logp * weights_BxL, axis=-1)


def continuation_logprobs(model: LoadedRun, contexts: Sequence[list[int]],
                          continuations: Sequence[list[int]], *, batch_size: int) -> np.ndarray:
  """log p(continuation | context) for each pair, on the model's mesh."""
  if len(contexts) != len(continuations):
    raise ValueError("contexts and continuations differ in number")
  seqs = [list(c) + list(x) for c, x in zip(contexts, continuations)]
  longest = max(len(s) for s in seqs)
  if longest > model.cfg.model.max_len + 1:
    raise ValueError(f"a scored sequence has {longest} tokens, more than the context window "
                     f"of {model.cfg.model.max_len}")
  length = min(math.ceil((longest - 1) / SEQ_BUCKET) * SEQ_BUCKET, model.cfg.model.max_len)
  partitioner = model.setup.partitioner
  rows = math.ceil(min(batch_size, len(seqs)) / partitioner.num_data) * partitioner.num_data
  place = lambda x: jax.device_put(x, partitioner.batch_sharding(x.ndim))
  out = []
  with partitioner.context():
    for start in range(0, len(seqs), rows):
      arrays = np.zeros((4, rows, length), np.int32)  # inputs, targets, segment ids, weights
      for r, (seq, cont) in enumerate(zip(seqs[start:start + rows],
                                          continuations[start:start + rows])):
        n = len(seq) - 1
        arrays[0, r, :n], arrays[1, r, :n], arrays[2, r, :n] = seq[:-1], seq[1:], 1
        arrays[3, r, n - len(cont):n] = 1
      inputs, targets, segment_ids, weights = (place(a) for a in arrays)
      sums = _sequence_logprobs(model.setup.graphdef, model.params, inputs, targets,
                                segment_ids, weights.astype(jnp.float32))
      out.append(np.asarray(jax.device_get(sums))[:min(rows, len(seqs) - start)])
  return np.concatenate(out)


def choose(model: LoadedRun, prompts: Sequence[list[int]], candidates: Sequence[str], *,
           length_norm: str = "none", batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Index of the most likely candidate completion for each prompt, and the scores [N, C]."""
  if not candidates:
    raise ValueError("the candidate list is empty: multiple choice needs at least one candidate")
  if length_norm not in LENGTH_NORMS:
    raise ValueError(f"unknown length_norm {length_norm!r}; valid: {', '.join(LENGTH_NORMS)}")
  cand_ids = [model.vocab.encode(c) for c in candidates]
  if any(not c for c in cand_ids):
    raise ValueError(f"a candidate encodes to no tokens: {list(candidates)}")
  contexts = [p for p in prompts for _ in candidates]
  conts = [c for _ in prompts for c in cand_ids]
  scores = continuation_logprobs(model, contexts, conts, batch_size=batch_size)
  scores = scores.reshape(len(prompts), len(candidates))
  if length_norm == "token":
    scores = scores / np.array([len(c) for c in cand_ids])
  elif length_norm == "char":
    scores = scores / np.array([len(c) for c in candidates])
  return scores.argmax(-1), scores


def normalize_answer(text: str) -> str:
  return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()


def generation_scores(task: Task, targets: Sequence[str],
                      predictions: Sequence[str]) -> dict[str, float]:
  em = float(np.mean([normalize_answer(t) == normalize_answer(p)
                      for t, p in zip(targets, predictions)]))
  out = {"exact_match": em}
  if task.metric == "rouge":
    out |= rouge(list(predictions), list(targets))
  return out


def primary(task: Task, scores: dict[str, float]) -> tuple[str, float]:
  """The headline metric of a task's score dict."""
  key = {"accuracy": "accuracy", "exact_match": "exact_match", "rouge": "rougeL"}[task.metric]
  return key, scores[key]


def baselines(task: Task, train: Source, queries: Sequence[dict], *, seed: int,
              sample: int = 5000) -> dict[str, Any]:
  """Chance and majority for choice; the most frequent train target (exact match) and a
  lead-n-words baseline (ROUGE) for generation. Train statistics from a seeded sample."""
  idx = np.random.default_rng(seed).permutation(len(train))[:sample]
  answers = [task.answer_of(train[int(i)]) for i in idx]
  majority, _ = collections.Counter(answers).most_common(1)[0]
  targets = [task.answer_of(q) for q in queries]
  if task.kind == "choice":
    return {"chance": 1.0 / len(task.candidates), "majority": float(np.mean(
        [t == majority for t in targets])), "majority_answer": majority}
  out = {"majority": generation_scores(task, targets, [majority] * len(targets)),
         "majority_answer": majority}
  if task.metric == "rouge":
    n = int(np.median([len(a.split()) for a in answers]))
    lead = [" ".join(task.input_of(q).split()[:n]) for q in queries]
    out[f"lead_{n}_words"] = generation_scores(task, targets, lead)
  return out
