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
do not fit the context window are dropped (the mean number used is reported). Tasks and
prompts live in gpt_flax/icl_tasks.py, scoring and baselines in gpt_flax/icl_scoring.py.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
from typing import Any, Sequence

import numpy as np
from absl import flags

from common import cli
from common import config as config_lib
from common.data.sources import open_source
from common.rundir import LoadedRun
from gpt_flax import generate as gen
from gpt_flax.icl_scoring import (LENGTH_NORMS, baselines, choose, continuation_logprobs,
                                  generation_scores, normalize_answer, primary)
from gpt_flax.icl_tasks import (KINDS, METRICS, TASKS, Prompt, Task, build_prompt, cut_at_stop,
                                demonstration, fit_prompt, get_task, sample_demos,
                                stop_strings, truncate_tokens)

# Tasks, prompts and scoring stay importable from here, the command's module.
__all__ = ["KINDS", "LENGTH_NORMS", "METRICS", "TASKS", "Prompt", "Task", "baselines",
           "build_prompt", "choose", "cli_main", "continuation_logprobs", "cut_at_stop",
           "demonstration", "evaluate", "fit_prompt", "generation_scores", "get_task", "main",
           "normalize_answer", "parse_shots", "primary", "sample_demos", "stop_strings", "table",
           "task_from_flags", "truncate_tokens"]


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
                                 max_len=model.cfg.model.max_len,
                                 max_new_tokens=task.max_new_tokens, eos_id=vocab.eos_id,
                                 vocab_size=vocab.vocab_size,
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


def main() -> None:
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
