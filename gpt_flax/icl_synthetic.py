"""A synthetic in-context task: checks the ICL harness with a model that CAN learn in context.

Items are three words, two noise words then a key ("file tool green"); the label
(true/false) is a function of the key only. The pretraining corpus holds episodes written in the
harness's prompt format, each with its OWN random key -> label map, so a model can only learn
to read the map off the demonstrations (an induction pattern: find the earlier item with the
same key, copy its label). The evaluation task fixes one map: zero-shot a model is at chance,
and it improves with k as demonstrations sharing the query's key become likely.

  python -m gpt_flax.icl_synthetic --output_dir=/tmp/icl_synth   # writes data, prints commands
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from common import config as config_lib
from gpt_flax.icl import Task, build_prompt

# One SentencePiece piece each in the Debian tokenizer (debian_sp8k), so an item is 3 tokens.
KEYS = ("green", "black", "white", "cloud", "dark", "light")
NOISE = ("file", "data", "tool", "server", "user", "code", "system", "library", "network",
         "image")
LABELS = ("false", "true")

TASK = Task(name="synthetic", dataset="", kind="choice", instruction="Answer true or false.",
            template="Input: {input}\nLabel:", candidates=LABELS, separator="\n")


def item(rng: np.random.Generator) -> tuple[str, int]:
  """(text, key index)."""
  noise = rng.choice(len(NOISE), 2, replace=False)
  key = int(rng.integers(len(KEYS)))
  return f"{NOISE[noise[0]]} {NOISE[noise[1]]} {KEYS[key]}", key


def episode(rng: np.random.Generator, num_items: int) -> str:
  """One pretraining document: items answered with a fresh random key -> label map."""
  mapping = rng.integers(0, len(LABELS), len(KEYS))
  demos = []
  for _ in range(num_items):
    text, key = item(rng)
    demos.append((text, LABELS[mapping[key]]))
  *context, (last_text, last_label) = demos
  return build_prompt(TASK, context, last_text) + TASK.answer_template.replace("{answer}",
                                                                               last_label)


def task_items(seed: int) -> dict[str, list[dict]]:
  """Every (noise, noise, key) item once under one fixed map, split 70/30 by a seeded shuffle.
  The map gives each label to half the keys, so the majority baseline stays at 50 %."""
  mapping = np.random.default_rng([seed, 1]).permutation(np.arange(len(KEYS)) % len(LABELS))
  rows = [{"text": f"{a} {b} {k}", "label": int(mapping[i])}
          for i, k in enumerate(KEYS) for a in NOISE for b in NOISE if a != b]
  order = np.random.default_rng([seed, 2]).permutation(len(rows))
  cut = int(0.7 * len(rows))
  return {"train": [rows[i] for i in order[:cut]], "validation": [rows[i] for i in order[cut:]]}


def write_synthetic(directory: str, *, seed: int = 0, num_episodes: int = 20000,
                    items_per_episode: tuple[int, int] = (4, 12)) -> dict[str, str]:
  """Writes pretrain/{split}.jsonl (episodes) and task/{split}.jsonl (items); returns specs."""
  rng = np.random.default_rng([seed, 0])
  for sub in ("pretrain", "task"):
    os.makedirs(os.path.join(directory, sub), exist_ok=True)
  sizes = {"train": num_episodes, "validation": max(num_episodes // 40, 8)}
  for split, n in sizes.items():
    with open(os.path.join(directory, "pretrain", f"{split}.jsonl"), "w") as f:
      for _ in range(n):
        f.write(json.dumps({"text": episode(rng, int(rng.integers(*items_per_episode)))}) + "\n")
  for split, rows in task_items(seed).items():
    with open(os.path.join(directory, "task", f"{split}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return {"pretrain": f"jsonl:{directory}/pretrain/{{split}}.jsonl",
          "task": f"jsonl:{directory}/task/{{split}}.jsonl"}


def commands(directory: str, specs: dict[str, str], tokenizer: str) -> str:
  """The pretraining and evaluation commands for the written data."""
  wd = os.path.join(directory, "workdir")
  return "\n".join([
      f"python -m gpt_flax.train --config=configs/gpt.py:tiny --workdir={wd} "
      f"--config.data.dataset='{specs['pretrain']}' --config.data.tokenizer={tokenizer} "
      f"--config.data.data_dir={directory} --config.model.max_len=128 --config.data.seq_len=128 "
      "--config.model.vocab_size=8192 --config.model.num_layers=2 --config.model.d_model=128 "
      "--config.model.d_ff=512 "
      "--config.train.batch_size=32 --config.train.num_steps=1500 --config.train.eval_every=500 "
      "--config.train.checkpoint_every=500 --config.train.log_every=100 "
      "--config.optimizer.learning_rate=0.003 --config.optimizer.warmup_steps=50",
      f"python -m gpt_flax.icl --checkpoint={wd} --task=custom --dataset='{specs['task']}' "
      f"--kind=choice --instruction='{TASK.instruction}' --template='Input: {{input}}\\nLabel:' "
      f"--separator='\\n' --candidates={','.join(LABELS)} --shots=0,1,4,8 --num_examples=200",
  ])


def main(argv) -> None:
  del argv
  directory = os.path.abspath(flags.FLAGS.output_dir)
  specs = write_synthetic(directory, seed=flags.FLAGS.seed)
  print(commands(directory, specs, flags.FLAGS.tokenizer))


def cli() -> None:
  flags.DEFINE_string("output_dir", None, "Where to write the data.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed for the map and the episodes.")
  flags.DEFINE_string("tokenizer", os.path.join(config_lib.DEFAULT_DATA_DIR, "tokenizers",
                                                "debian_sp8k.model"),
                      "Tokenizer the printed commands pretrain with (the words are single "
                      "pieces in the Debian one).")
  app.run(config_lib.exit_on_error(main))


if __name__ == "__main__":
  cli()
