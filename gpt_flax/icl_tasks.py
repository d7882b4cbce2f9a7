"""In-context learning tasks and their prompts: a labelled dataset with its prompt format
(built-in or custom), k demonstrations drawn per query, and the prompt that fits the context
window (gpt_flax/icl.py explains the format)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from common.data.records import get_text, Source
from common.vocab import Vocabulary
from gpt_flax import generate as gen

KINDS = ("choice", "generate")
METRICS = {"choice": ("accuracy",), "generate": ("exact_match", "rouge")}


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
