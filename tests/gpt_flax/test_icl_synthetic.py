"""Synthetic ICL task: episodes are harness prompts plus the answer, each episode reads one key ->
label map off its own items, the evaluation task fixes one map, and its splits are disjoint."""

import json
import re

import numpy as np

from common.vocab import load_vocab
from gpt_flax import icl
from gpt_flax import icl_synthetic as syn

QUERY = re.compile(r"^(\w+) (\w+) (\w+)$", re.M)


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_episode_is_the_harness_prompt_plus_the_answer_under_its_own_map():
  ep = syn.episode(np.random.default_rng(3), 6)
  rng = np.random.default_rng(3)  # the same draws, in the module's order: map, then items
  mapping = rng.integers(0, len(syn.LABELS), len(syn.KEYS))
  items = [syn.item(rng) for _ in range(6)]
  demos = [(text, syn.LABELS[mapping[key]]) for text, key in items]
  expected = icl.build_prompt(syn.TASK, demos[:-1], demos[-1][0]) + " " + demos[-1][1]
  assert ep == expected
  # The answer template is " {answer}", so the format is the harness's to the character.
  assert syn.TASK.answer_template == " {answer}"


def test_every_pretraining_episode_is_consistent_with_one_map(tmp_path):
  specs = syn.write_synthetic(str(tmp_path), seed=1, num_episodes=40)
  assert specs["pretrain"] == f"jsonl:{tmp_path}/pretrain/{{split}}.jsonl"
  maps = set()
  for split, n in (("train", 40), ("validation", 8)):
    rows = _read(tmp_path / "pretrain" / f"{split}.jsonl")
    assert len(rows) == n
    for row in rows:
      assert row["text"].startswith(syn.TASK.instruction + "\n")
      found = QUERY.findall(row["text"])
      assert 8 <= len(found) < 21 and len(found) == row["text"].count("\n")
      seen = {}
      for noise, key, label in found:
        assert noise in syn.NOISE and key in syn.KEYS and label in syn.LABELS
        assert seen.setdefault(key, label) == label  # a key keeps its label within an episode
      maps.add(tuple(sorted(seen.items())))
      # The loss falls on exactly the answers (not on the instruction's "true or false.").
      assert [m.strip() for m in re.findall(syn.LOSS_REGEX, row["text"])] == [
          label for _, _, label in found]
  assert len(maps) > 1  # ... but the map changes between episodes


def test_task_has_one_fixed_map_and_disjoint_splits_covering_every_item(tmp_path):
  specs = syn.write_synthetic(str(tmp_path), seed=0, num_episodes=8)
  assert specs["task"] == f"jsonl:{tmp_path}/task/{{split}}.jsonl"
  splits = {s: _read(tmp_path / "task" / f"{s}.jsonl") for s in ("train", "validation")}
  assert splits == syn.task_items(0)
  label_of_key = {}
  for rows in splits.values():
    for r in rows:
      key = r["text"].split()[-1]
      assert label_of_key.setdefault(key, r["label"]) == r["label"]
  assert set(label_of_key) == set(syn.KEYS)
  # Each label on half the keys (every key has as many items): the majority baseline is 50 %.
  assert sorted(label_of_key.values()) == [0, 0, 0, 1, 1, 1]
  texts = {s: [r["text"] for r in rows] for s, rows in splits.items()}
  assert not set(texts["train"]) & set(texts["validation"])
  n = len(syn.KEYS) * len(syn.NOISE)
  assert len(set(texts["train"] + texts["validation"])) == len(texts["train"]) + len(
      texts["validation"]) == n
  assert len(texts["train"]) == int(0.7 * n)
  # Another seed: another map and split, but the same items.
  other = syn.task_items(1)
  assert {r["text"] for rows in other.values() for r in rows} == set(texts["train"] +
                                                                     texts["validation"])
  assert other != splits


def test_word_tokenizer_makes_every_word_one_piece(tmp_path):
  specs = syn.write_synthetic(str(tmp_path), seed=0, num_episodes=200)
  vocab = load_vocab(specs["tokenizer"])
  text = _read(tmp_path / "pretrain" / "train.jsonl")[0]["text"]
  ids = vocab.encode(text)
  assert len(ids) == len(text.split()) and vocab.unk_id not in ids
  assert vocab.decode(ids) == " ".join(text.split())  # newlines normalise to spaces
  # Candidates are single tokens, so multiple-choice scoring compares one logit each.
  assert [len(vocab.encode(" " + label)) for label in syn.LABELS] == [1, 1]
  assert syn.model_vocab_size(specs["tokenizer"]) % 128 == 0
  assert syn.model_vocab_size(specs["tokenizer"]) >= vocab.vocab_size
  assert f"--config.model.vocab_size={syn.model_vocab_size(specs['tokenizer'])}" in syn.commands(
      str(tmp_path), specs)
