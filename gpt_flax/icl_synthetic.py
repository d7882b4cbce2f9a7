"""A synthetic in-context task: checks the ICL harness with a model that CAN learn in context.

Items are a noise word then a key ("tool green"); the label (true/false) is a function of the
key only. The pretraining corpus holds episodes written in the harness's prompt format (one
"tool green true" line per item), each with its OWN random key -> label map, so a model can
only learn to read the map off the demonstrations: the induction pattern small transformers
learn first (find the earlier occurrence of the current token, copy the token after it).
The evaluation task fixes one map: zero-shot a model is at chance, and it improves with k as
demonstrations sharing the query's key become likely.

A word-level SentencePiece model trained on the episodes (every word one piece, ~300 ids) keeps
the network's vocabulary, and so a pretraining step, small.

  python -m gpt_flax.icl_synthetic --output_dir=/tmp/icl_synth   # writes data, prints commands
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import flags

from common import cli
from common.tokenizer import train_sentencepiece
from common.vocab import CONTROL_SYMBOLS, load_vocab
from gpt_flax.icl_tasks import Task, build_prompt

KEYS = ("green", "black", "white", "cloud", "dark", "light")
NOISE = ("file", "data", "tool", "server", "user", "code", "system", "library", "network",
         "image", "disk", "font", "game", "mail", "shell", "audio", "video", "driver", "kernel",
         "module", "plugin", "editor", "viewer", "parser", "daemon", "client", "backup",
         "cache", "config", "theme")
LABELS = ("false", "true")

# The loss is on the answers only (as in instruction tuning): with every token weighted, the
# unpredictable noise and key words dominate the gradient. And the answer follows the key
# directly: with "Input: {input}\nLabel:" between them a 2-layer model stayed at chance after
# 3,000 steps even with this loss.
LOSS_REGEX = r" (?:true|false)(?=\n|$)"

TASK = Task(name="synthetic", dataset="", kind="choice", instruction="Answer true or false.",
            template="{input}", candidates=LABELS, separator="\n")


def item(rng: np.random.Generator) -> tuple[str, int]:
  """(text, key index)."""
  noise = int(rng.integers(len(NOISE)))
  key = int(rng.integers(len(KEYS)))
  return f"{NOISE[noise]} {KEYS[key]}", key


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
  """Every (noise, key) item once under one fixed map, split 70/30 by a seeded shuffle.
  The map gives each label to half the keys, so the majority baseline stays at 50 %."""
  mapping = np.random.default_rng([seed, 1]).permutation(np.arange(len(KEYS)) % len(LABELS))
  rows = [{"text": f"{a} {k}", "label": int(mapping[i])} for i, k in enumerate(KEYS) for a in NOISE]
  order = np.random.default_rng([seed, 2]).permutation(len(rows))
  cut = int(0.7 * len(rows))
  return {"train": [rows[i] for i in order[:cut]], "validation": [rows[i] for i in order[cut:]]}


def train_tokenizer(texts: list[str], path: str) -> str:
  """A word-level SentencePiece model: each distinct word one piece (plus SentencePiece's byte
  fallback, specials and control symbols: the vocabulary must list exactly that many)."""
  words = {w for t in texts for w in t.split()}
  size = len(words) + 256 + 4 + len(CONTROL_SYMBOLS)  # bytes, pad/eos/unk/bos, [CLS] [SEP] [MASK]
  return train_sentencepiece(texts, path, size, model_type="word",
                             metadata={"dataset": "gpt_flax.icl_synthetic episodes"})


def model_vocab_size(tokenizer: str) -> int:
  """The network's vocabulary: the tokenizer's, padded to a multiple of 128."""
  return math.ceil(load_vocab(tokenizer).vocab_size / 128) * 128


def write_synthetic(directory: str, *, seed: int = 0, num_episodes: int = 20000,
                    items_per_episode: tuple[int, int] = (8, 21)) -> dict[str, str]:
  """Writes pretrain/{split}.jsonl (episodes), task/{split}.jsonl (items) and tokenizer.model
  (trained on the training episodes); returns their specs."""
  rng = np.random.default_rng([seed, 0])
  for sub in ("pretrain", "task"):
    os.makedirs(os.path.join(directory, sub), exist_ok=True)
  sizes = {"train": num_episodes, "validation": max(num_episodes // 40, 8)}
  episodes = {}
  for split, n in sizes.items():
    episodes[split] = [episode(rng, int(rng.integers(*items_per_episode))) for _ in range(n)]
    with open(os.path.join(directory, "pretrain", f"{split}.jsonl"), "w") as f:
      f.writelines(json.dumps({"text": text}) + "\n" for text in episodes[split])
  for split, rows in task_items(seed).items():
    with open(os.path.join(directory, "task", f"{split}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  tokenizer = train_tokenizer(episodes["train"], os.path.join(directory, "tokenizer.model"))
  return {"pretrain": f"jsonl:{directory}/pretrain/{{split}}.jsonl",
          "task": f"jsonl:{directory}/task/{{split}}.jsonl", "tokenizer": tokenizer}


def commands(directory: str, specs: dict[str, str]) -> str:
  """The pretraining and evaluation commands for the written data."""
  wd = os.path.join(directory, "workdir")
  return "\n".join([
      (f"python -m gpt_flax.train --config=configs/gpt.py:tiny --workdir={wd} "
      f"--config.data.dataset='{specs['pretrain']}' --config.data.tokenizer={specs['tokenizer']} "
      f"--config.data.data_dir={directory} --config.model.max_len=128 --config.data.seq_len=128 "
      f"--config.model.vocab_size={model_vocab_size(specs['tokenizer'])} "
      "--config.model.num_layers=2 --config.model.d_model=128 --config.model.d_ff=512 "
      "--config.train.batch_size=32 --config.train.num_steps=6000 --config.train.eval_every=1000 "
      "--config.train.checkpoint_every=2000 --config.train.log_every=200 "
      "--config.optimizer.learning_rate=0.003 --config.optimizer.warmup_steps=50 "
      f"--config.data.loss_regex='{LOSS_REGEX}'"),
      (f"python -m gpt_flax.icl --checkpoint={wd} --task=custom --dataset='{specs['task']}' "
      f"--kind=choice --instruction='{TASK.instruction}' --template='{{input}}' "
      f"--separator='\\n' --candidates={','.join(LABELS)} --shots=0,1,4,8,16 --num_examples=200"),
  ])


def main() -> None:
  if not flags.FLAGS.output_dir:
    raise ValueError("--output_dir is required")
  directory = os.path.abspath(flags.FLAGS.output_dir)
  specs = write_synthetic(directory, seed=flags.FLAGS.seed)
  print(commands(directory, specs))


def define_flags() -> None:
  flags.DEFINE_string("output_dir", None, "Where to write the data.")
  flags.DEFINE_integer("seed", 0, "Seed for the map and the episodes.")


def cli_main() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  cli_main()
