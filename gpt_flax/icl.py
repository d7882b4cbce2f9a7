"""In-context learning evaluation: zero-, one- and few-shot prompting (Brown et al., 2020).

  python -m gpt_flax.icl --checkpoint=DIR --task=sentiment --shots=0,1,8
  python -m gpt_flax.icl --checkpoint=DIR --task=debian_synopsis --num_examples=100
  python -m gpt_flax.icl --checkpoint=DIR --task=custom --dataset='jsonl:qa/{split}.jsonl' \
      --input_field=question --target_field=answer --template='Q: {input}\nA:' \
      --kind=generate --metric=exact_match

No parameter is updated. A prompt is the task description, k demonstrations from the training
split (drawn per query with the seed, never the query item itself), then the query:

  {instruction}{sep}{template(demo 1)}{answer(demo 1)}{sep}...{template(query)}

Multiple choice scores each candidate completion by its log-likelihood given the prompt
(optionally per token or per character) and picks the best; generation decodes greedily,
cuts the text where the next example would start, and scores exact match or ROUGE. The k-shot
prompt of a query is its (k+1)-shot prompt minus the last demonstration; demonstrations that
do not fit the context window are dropped (the mean number used is reported).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import re
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from common import config as config_lib
from common import cli
from common.data.records import get_text, Source
from common.data.sources import open_source
from common.rouge import rouge
from common.rundir import LoadedRun
from common.vocab import Vocabulary
from gpt_flax import generate as gen

KINDS = ("choice", "generate")
METRICS = {"choice": ("accuracy",), "generate": ("exact_match", "rouge")}
LENGTH_NORMS = ("none", "token", "char")
SEQ_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class Task:
  """A labelled dataset and its prompt format. `template` holds `{input}`; a demonstration is
  template + answer_template (`{answer}`). For `choice`, the target is a candidate's index
  (an int label) or its text."""
  name: str
  dataset: str
  kind: str
  template: str
  input_field: str = "text"
  target_field: str = "label"
  train_split: str = "train"
  eval_split: str = "validation"
  instruction: str = ""
  answer_template: str = " {answer}"
  separator: str = "\n\n"
  candidates: tuple[str, ...] = ()
  metric: str = "accuracy"
  max_input_tokens: int = 0  # each example's input is cut to this many tokens (0: whole)
  max_new_tokens: int = 32

  def check(self) -> None:
    if self.kind not in KINDS:
      raise ValueError(f"task {self.name}: unknown kind {self.kind!r}; valid: {', '.join(KINDS)}")
    if self.metric not in METRICS[self.kind]:
      raise ValueError(f"task {self.name}: metric {self.metric!r} does not fit kind "
                       f"{self.kind!r}; valid: {', '.join(METRICS[self.kind])}")
    if "{input}" not in self.template:
      raise ValueError(f"task {self.name}: template {self.template!r} has no {{input}}")
    if "{answer}" not in self.answer_template:
      raise ValueError(f"task {self.name}: answer template {self.answer_template!r} has no "
                       "{answer}")
    if self.kind == "choice" and not self.candidates:
      raise ValueError(f"task {self.name} is multiple choice but its candidate list is empty; "
                       "pass --candidates=A,B,...")
    if self.kind == "choice" and any(not c.strip() for c in self.candidates):
      raise ValueError(f"task {self.name}: empty candidate in {list(self.candidates)}")

  def input_of(self, example: dict) -> str:
    return get_text(example, self.input_field)

  def answer_of(self, example: dict) -> str:
    """The target as text: a candidate for an int label, else the field's text."""
    if self.target_field not in example:
      raise ValueError(f"task {self.name}: example has no field {self.target_field!r}; fields "
                       f"present: {sorted(example)}")
    target = example[self.target_field]
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
      if not 0 <= target < len(self.candidates):
        raise ValueError(f"task {self.name}: label {target} has no candidate (candidates: "
                         f"{list(self.candidates)})")
      return self.candidates[target]
    return get_text(example, self.target_field).strip()


TASKS = {
    "sentiment": Task(
        name="sentiment", dataset="sentiment", kind="choice",
        instruction="Is each movie review positive or negative?",
        template="Review: {input}\nSentiment:", candidates=("negative", "positive")),
    "debian_synopsis": Task(
        name="debian_synopsis", dataset="debian", kind="generate", target_field="synopsis",
        instruction="Each Debian package description is followed by its one-line summary.",
        template="Description: {input}\nSummary:", metric="rouge", max_input_tokens=40,
        max_new_tokens=16),
}


def get_task(name: str, **overrides: Any) -> Task:
  """A built-in task (fields overridable) or `custom` (dataset, template, kind required)."""
  if name == "custom":
    missing = [k for k in ("dataset", "template", "kind") if not overrides.get(k)]
    if missing:
      raise ValueError(f"task custom needs {', '.join('--' + m for m in missing)}")
    task = Task(name="custom", **{k: v for k, v in overrides.items() if v is not None})
  elif name in TASKS:
    task = dataclasses.replace(TASKS[name], **{k: v for k, v in overrides.items() if v is not None})
  else:
    raise ValueError(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}, custom")
  if task.kind == "generate" and overrides.get("metric") is None and task.metric == "accuracy":
    task = dataclasses.replace(task, metric="exact_match")
  task.check()
  return task


# --------------------------------------------------------------------------- prompts


def demonstration(task: Task, text: str, answer: str) -> str:
  return task.template.replace("{input}", text) + task.answer_template.replace("{answer}", answer)


def build_prompt(task: Task, demos: Sequence[tuple[str, str]], query: str) -> str:
  """Instruction, demonstrations (input, answer) and the query, joined by the separator."""
  parts = [task.instruction] if task.instruction else []
  parts += [demonstration(task, text, answer) for text, answer in demos]
  parts.append(task.template.replace("{input}", query))
  return task.separator.join(parts)


def stop_strings(task: Task) -> list[str]:
  """Where a generated answer ends: the next example's opening or the separator (if the
  tokenizer keeps it)."""
  head = task.template.split("{input}")[0].strip()
  return [s for s in (task.separator.strip(), head) if s]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
  ends = [i for i in (text.find(s) for s in stops) if i >= 0]
  return text[:min(ends)] if ends else text


def truncate_tokens(vocab: Vocabulary, text: str, n: int) -> str:
  ids = vocab.encode(text)
  return text if n <= 0 or len(ids) <= n else vocab.decode(ids[:n])


@dataclasses.dataclass
class Prompt:
  text: str
  ids: list[int]
  shots: int          # demonstrations that fit
  truncated: bool     # the query input was cut to fit


def fit_prompt(task: Task, vocab: Vocabulary, demos: Sequence[tuple[str, str]], query: str,
               budget: int) -> Prompt:
  """The prompt with as many of `demos` (in order) as fit `budget` tokens; if even none fit,
  the query input is cut from its end."""
  for n in range(len(demos), -1, -1):
    text = build_prompt(task, demos[:n], query)
    ids = gen.encode_prompt(vocab, text)
    if len(ids) <= budget:
      return Prompt(text, ids, n, False)
  query_ids = vocab.encode(query)
  keep = len(query_ids) - (len(ids) - budget)
  while keep > 0:
    text = build_prompt(task, [], vocab.decode(query_ids[:keep]))
    ids = gen.encode_prompt(vocab, text)
    if len(ids) <= budget:
      return Prompt(text, ids, 0, True)
    keep -= max(1, len(ids) - budget)
  raise ValueError(f"task {task.name}: the instruction and template alone take more than "
                   f"{budget} tokens, the room the context window leaves for the prompt")


def sample_demos(task: Task, pool: Source, query_index: int, query_text: str, k: int,
                 seed: int, same_split: bool) -> list[tuple[str, str]]:
  """k (input, answer) demonstrations for query `query_index`, drawn from `pool` with
  (seed, query_index); never the query item (same index when pool is the query's split, or
  the same input text)."""
  if k == 0:
    return []
  rng = np.random.default_rng([seed, query_index])
  draw = rng.choice(len(pool), size=min(len(pool), k + 8), replace=False)
  out = []
  for i in draw:
    if same_split and int(i) == query_index:
      continue
    example = pool[int(i)]
    text = task.input_of(example)
    if text.strip() == query_text.strip():
      continue
    out.append((text, task.answer_of(example)))
    if len(out) == k:
      break
  return out


# --------------------------------------------------------------------------- scoring


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


# --------------------------------------------------------------------------- evaluation


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


def evaluate(model: LoadedRun, task: Task, *, shots: Sequence[int], num_examples: int,
             seed: int = 0, length_norm: str = "none", batch_size: int = 16,
             data_dir: str = "", num_logged: int = 3) -> dict[str, Any]:
  """Scores `num_examples` eval items (a seeded sample) at each k in `shots`."""
  if not shots or any(k < 0 for k in shots):
    raise ValueError(f"shots={list(shots)}: give one or more k >= 0")
  if num_examples < 1:
    raise ValueError(f"num_examples={num_examples} must be >= 1")
  train = open_source(task.dataset, task.train_split, data_dir)
  evals = open_source(task.dataset, task.eval_split, data_dir)
  if len(train) == 0 or len(evals) == 0:
    raise ValueError(f"task {task.name}: split {task.train_split} or {task.eval_split} is empty")
  same_split = task.train_split == task.eval_split
  order = np.random.default_rng(seed).permutation(len(evals))[:num_examples]
  queries = [evals[int(i)] for i in order]
  vocab = model.vocab
  cut = lambda t: truncate_tokens(vocab, t, task.max_input_tokens)
  query_texts = [cut(task.input_of(q)) for q in queries]
  targets = [task.answer_of(q) for q in queries]
  if task.kind == "choice":
    unknown = sorted(set(targets) - set(task.candidates))
    if unknown:
      raise ValueError(f"task {task.name}: targets {unknown[:5]} are not among the candidates "
                       f"{list(task.candidates)}")
    reserve = max(len(vocab.encode(task.answer_template.replace("{answer}", c)))
                  for c in task.candidates)
  else:
    reserve = task.max_new_tokens
  budget = model.cfg.model.max_len - reserve
  demo_lists = [[(cut(t), a) for t, a in sample_demos(task, train, int(i), task.input_of(q),
                                                         max(shots), seed, same_split)]
                for i, q in zip(order, queries)]
  results = {"task": dataclasses.asdict(task), "checkpoint_step": model.step,
             "num_examples": len(queries), "seed": seed, "length_norm": length_norm,
             "context_window": model.cfg.model.max_len,
             "baselines": baselines(task, train, queries, seed=seed), "shots": {}}
  for k in shots:
    prompts = [fit_prompt(task, vocab, demos[:k], q, budget)
               for demos, q in zip(demo_lists, query_texts)]
    if task.kind == "choice":
      answers = [task.answer_template.replace("{answer}", c) for c in task.candidates]
      picked, _ = choose(model, [p.ids for p in prompts], answers, length_norm=length_norm,
                         batch_size=batch_size)
      predictions = [task.candidates[i] for i in picked]
      scores = {"accuracy": float(np.mean([p == t for p, t in zip(predictions, targets)]))}
      scores["predicted"] = dict(collections.Counter(predictions))
    else:
      outs = gen.generate_tokens(model.setup.graphdef, model.params, [p.ids for p in prompts],
                                 max_len=model.cfg.model.max_len, max_new_tokens=task.max_new_tokens,
                                 eos_id=vocab.eos_id, vocab_size=vocab.vocab_size,
                                 batch_size=batch_size, partitioner=model.setup.partitioner)
      stops = stop_strings(task)
      predictions = [cut_at_stop(gen.continuation_text(vocab, p.ids, o), stops).strip()
                     for p, o in zip(prompts, outs)]
      scores = generation_scores(task, targets, predictions)
    results["shots"][str(k)] = scores | {
        "mean_shots_used": float(np.mean([p.shots for p in prompts])),
        "truncated_queries": int(sum(p.truncated for p in prompts)),
        "examples": [{"prompt": p.text, "target": t, "prediction": y}
                     for p, t, y in list(zip(prompts, targets, predictions))[:num_logged]]}
  return results


def table(results: dict[str, Any]) -> str:
  """Markdown: one row per k, the headline metric beside its baselines."""
  task = Task(**{k: tuple(v) if k == "candidates" else v for k, v in results["task"].items()})
  b = results["baselines"]
  key = primary(task, next(iter(results["shots"].values())))[0]
  if task.kind == "choice":
    base_cols = [("chance", b["chance"]), (f"majority ({b['majority_answer']})", b["majority"])]
  else:
    base_cols = [(name, v[key]) for name, v in b.items() if isinstance(v, dict)]
  head = f"| k | {key} | " + " | ".join(n for n, _ in base_cols) + " | mean shots used | n |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for k, s in results["shots"].items():
    lines.append(f"| {k} | {s[key]:.3f} | " + " | ".join(f"{v:.3f}" for _, v in base_cols)
                 + f" | {s['mean_shots_used']:.1f} | {results['num_examples']} |")
  return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def _unescape(s: str | None) -> str | None:
  return None if s is None else s.replace("\\n", "\n").replace("\\t", "\t")


def _define_flags() -> None:
  gen.define_model_flags()
  flags.DEFINE_string("task", None, f"{', '.join(sorted(TASKS))} or custom.")
  flags.DEFINE_string("shots", "0,1,8", "Comma list of k (demonstrations per prompt).")
  flags.DEFINE_integer("num_examples", 200, "Eval items scored (a seeded sample of the split).")
  flags.DEFINE_integer("seed", 0, "Seed for the eval sample and the demonstrations.")
  flags.DEFINE_enum("length_norm", "none", LENGTH_NORMS,
                    "Multiple choice: compare log-likelihood summed, per token or per character.")
  flags.DEFINE_string("data_dir", config_lib.DEFAULT_DATA_DIR, "Where datasets are prepared.")
  flags.DEFINE_string("output_json", None, "Also write the full results here.")
  # Task fields (override a built-in task, or define --task=custom).
  flags.DEFINE_string("dataset", None, "Dataset spec (common.data.sources), e.g. jsonl:f.jsonl.")
  flags.DEFINE_string("train_split", None, "Split demonstrations come from.")
  flags.DEFINE_string("eval_split", None, "Split queries come from.")
  flags.DEFINE_string("input_field", None, "Field holding the input text.")
  flags.DEFINE_string("target_field", None, "Field holding the label index or answer text.")
  flags.DEFINE_enum("kind", None, KINDS, "Multiple choice or generation.")
  flags.DEFINE_string("template", None, "Prompt of one example with {input}; \\n = newline.")
  flags.DEFINE_string("answer_template", None, "Answer after the template, with {answer}.")
  flags.DEFINE_string("instruction", None, "Task description opening every prompt.")
  flags.DEFINE_string("separator", None, "Between instruction and examples; \\n = newline.")
  flags.DEFINE_list("candidates", None, "Multiple choice answers (label i = the i-th).")
  flags.DEFINE_enum("metric", None, ("accuracy", "exact_match", "rouge"), "Score.")
  flags.DEFINE_integer("max_input_tokens", None, "Cut each input to this many tokens (0: whole).")
  flags.DEFINE_integer("max_new_tokens", None, "Generation: tokens decoded per answer.")


def task_from_flags() -> Task:
  f = flags.FLAGS
  if not f.task:
    raise ValueError(f"--task is required; valid: {', '.join(sorted(TASKS))}, custom")
  candidates = None if f.candidates is None else tuple(c.strip() for c in f.candidates)
  return get_task(f.task, dataset=f.dataset, train_split=f.train_split, eval_split=f.eval_split,
                  input_field=f.input_field, target_field=f.target_field, kind=f.kind,
                  template=_unescape(f.template), answer_template=_unescape(f.answer_template),
                  instruction=_unescape(f.instruction), separator=_unescape(f.separator),
                  candidates=candidates, metric=f.metric, max_input_tokens=f.max_input_tokens,
                  max_new_tokens=f.max_new_tokens)


def parse_shots(spec: str) -> list[int]:
  try:
    shots = [int(s) for s in spec.split(",") if s.strip()]
  except ValueError:
    shots = []
  if not shots or any(k < 0 for k in shots):
    raise ValueError(f"--shots={spec!r}: expected a comma list of k >= 0, e.g. 0,1,8")
  return shots


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  task = task_from_flags()
  shots = parse_shots(f.shots)
  model = gen.model_from_flags()
  results = evaluate(model, task, shots=shots, num_examples=f.num_examples, seed=f.seed,
                     length_norm=f.length_norm, batch_size=f.batch_size, data_dir=f.data_dir)
  results["checkpoint"] = model.run_dir.path
  print(f"# {task.name}: {task.kind}, {task.metric}; checkpoint {model.run_dir.path} step "
        f"{model.step}; {results['num_examples']} {task.eval_split} items; context window "
        f"{model.cfg.model.max_len}")
  print(table(results), flush=True)
  if f.output_json:
    with open(f.output_json, "w") as out:
      json.dump(results, out, indent=2)
    print(f"wrote {f.output_json}", file=sys.stderr)


def cli_main() -> None:
  cli.run(main, _define_flags)


if __name__ == "__main__":
  cli_main()
