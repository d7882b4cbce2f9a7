"""In-context evaluation harness: prompt format, demonstration hygiene, scoring with a model
built to prefer one answer, the command line and bad input."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from common import train_state
from common.partitioning import Partitioner
from common.rundir import LoadedRun
from configs.gpt import get_config
from gpt_flax import generate as gen
from gpt_flax import icl
from gpt_flax.model import GPTModel
from tests.gpt_flax.test_generate import ROOT, make_workdir

WORDS = ("Review:", "Sentiment:", "good", "bad", "film", "plot", "dull", "great", "fine", "long")


class WordVocab:
  """Whitespace-split words -> ids (pad 0, eos 1, unk 2, bos 3, as the library's vocabularies)."""
  pad_id, eos_id, unk_id, bos_id = 0, 1, 2, 3

  def __init__(self, words):
    self.words = ["<pad>", "</s>", "<unk>", "<s>", *words]
    self.index = {w: i for i, w in enumerate(self.words)}
    self.vocab_size = len(self.words)

  def encode(self, text):
    return [self.index.get(w, self.unk_id) for w in text.split()]

  def decode(self, ids):
    out = []
    for i in ids:
      if i == self.eos_id:
        break
      if i not in (self.pad_id, self.bos_id):
        out.append(self.words[i])
    return " ".join(out)


def preferring(word: str) -> LoadedRun:
  """A tiny GPT on the 8-device training mesh whose every next-token prediction is `word`:
  the final LayerNorm outputs a constant (scale 0) pointing along `word`'s tied embedding."""
  cfg = get_config("tiny")
  vocab = WordVocab(WORDS)
  setup = train_state.make_setup(GPTModel(cfg), cfg, Partitioner.from_config(cfg.mesh))
  params = train_state.init_state(setup)["params"]
  row = params["embed"]["embedding"][vocab.index[word]]
  params["final_norm"]["scale"] = jnp.zeros_like(params["final_norm"]["scale"])
  params["final_norm"]["bias"] = 50.0 * row / jnp.linalg.norm(row)
  return LoadedRun(cfg, setup, params, vocab, step=0, run_dir=None)


SENTIMENT = icl.get_task("sentiment", candidates=("bad", "good"), instruction="Rate it.")


def test_prompt_is_built_exactly_as_the_template_says():
  demos = [("great film", "good"), ("dull plot", "bad")]
  assert icl.build_prompt(SENTIMENT, demos, "long film") == (
      "Rate it.\n\nReview: great film\nSentiment: good\n\nReview: dull plot\nSentiment: bad"
      "\n\nReview: long film\nSentiment:")
  custom = icl.get_task("custom", dataset="jsonl:x", kind="generate", template="Q: {input} A:",
                        answer_template=" {answer}.", separator=" | ")
  assert icl.build_prompt(custom, [("1+1", "2")], "2+2") == "Q: 1+1 A: 2. | Q: 2+2 A:"
  assert custom.metric == "exact_match" and icl.stop_strings(custom) == ["|", "Q:"]
  assert icl.cut_at_stop(" 4. | Q: 3+3 A: 6", icl.stop_strings(custom)) == " 4. "


def test_demonstrations_never_include_the_query_item():
  texts = ["a", "b", "c", "a", "d", "e", "f", "b"]  # duplicates across indices
  pool = [{"text": t, "label": i % 2} for i, t in enumerate(texts)]
  for q in range(len(pool)):
    for seed in range(5):
      demos = icl.sample_demos(SENTIMENT, pool, q, texts[q], 4, seed, same_split=True)
      assert len(demos) == 4 and texts[q] not in [t for t, _ in demos]
  # Nested: the k-shot demonstrations are the first k of the few-shot ones.
  few = icl.sample_demos(SENTIMENT, pool, 2, "c", 4, 0, same_split=True)
  assert icl.sample_demos(SENTIMENT, pool, 2, "c", 2, 0, same_split=True) == few[:2]


def test_demonstrations_that_do_not_fit_are_dropped_then_the_query_is_cut():
  vocab = WordVocab(WORDS)
  demos = [("great film", "good"), ("dull plot", "bad")]
  # bos + "Rate it." (2) + 5 per demo + query (2 + its words): 1 + 2 + 10 + 4 = 17 tokens.
  assert icl.fit_prompt(SENTIMENT, vocab, demos, "long film", 17).shots == 2
  assert icl.fit_prompt(SENTIMENT, vocab, demos, "long film", 16).shots == 1
  p = icl.fit_prompt(SENTIMENT, vocab, demos, "long film fine plot", 6)
  assert (p.shots, p.truncated, p.text) == (0, True, "Rate it.\n\nReview: long\nSentiment:")
  with pytest.raises(ValueError, match="instruction and template alone"):
    icl.fit_prompt(SENTIMENT, vocab, demos, "long film", 4)


@pytest.mark.parametrize("word", ["good", "bad"])
def test_multiple_choice_picks_the_candidate_the_model_prefers(word):
  model = preferring(word)
  prompts = [gen.encode_prompt(model.vocab, t) for t in
             ("Review: great film Sentiment:", "Review: dull Sentiment:", "fine")]
  for norm in icl.LENGTH_NORMS:
    picked, scores = icl.choose(model, prompts, [" bad", " good", " film plot"],
                                length_norm=norm, batch_size=2)
    assert list(picked) == [[" bad", " good"].index(" " + word)] * 3, (norm, scores)
  with pytest.raises(ValueError, match="candidate list is empty"):
    icl.choose(model, prompts, [])


def _write_task(tmp_path, n_train=30, n_eval=20):
  rng = np.random.default_rng(0)
  for split, n in (("train", n_train), ("validation", n_eval)):
    with open(tmp_path / f"{split}.jsonl", "w") as f:
      for _ in range(n):
        words = " ".join(rng.choice(["great", "dull", "film", "plot", "long", "fine"], 3))
        label = int(rng.random() < 0.7)  # mostly "good": the majority answer
        f.write(json.dumps({"text": words, "label": label,
                            "answer": ["bad", "good"][label]}) + "\n")
  return f"jsonl:{tmp_path}/{{split}}.jsonl"


def test_evaluate_reports_what_a_model_that_always_answers_good_should_get(tmp_path):
  spec = _write_task(tmp_path)
  model = preferring("good")
  targets = [json.loads(l)["answer"] for l in open(tmp_path / "validation.jsonl")]
  share_good = targets.count("good") / len(targets)
  res = icl.evaluate(model, icl.get_task("sentiment", dataset=spec, candidates=("bad", "good")),
                     shots=[0, 1, 3], num_examples=100, batch_size=8)
  assert res["num_examples"] == 20
  assert res["baselines"]["chance"] == 0.5 and res["baselines"]["majority_answer"] == "good"
  assert res["baselines"]["majority"] == pytest.approx(share_good)
  for k, s in res["shots"].items():
    assert s["accuracy"] == pytest.approx(share_good) and s["predicted"] == {"good": 20}
    assert s["mean_shots_used"] == int(k)
  prompt = res["shots"]["3"]["examples"][0]["prompt"]
  assert prompt.count("Review:") == 4 and prompt.endswith("Sentiment:")
  gen_task = icl.get_task("custom", dataset=spec, kind="generate", target_field="answer",
                          template="Review: {input}\nSentiment:", metric="rouge",
                          max_new_tokens=1)
  res = icl.evaluate(model, gen_task, shots=[0, 2], num_examples=100, batch_size=8)
  for s in res["shots"].values():
    assert s["exact_match"] == pytest.approx(share_good)
    assert s["rougeL"] == pytest.approx(100 * share_good)  # ROUGE is x100 everywhere
  assert res["baselines"]["majority"]["exact_match"] == pytest.approx(share_good)
  assert "lead_1_words" in res["baselines"]
  assert "| k | rougeL | majority | lead_1_words |" in icl.table(res)


def test_cli_table_and_json(tmp_path):
  workdir = make_workdir(str(tmp_path / "run"))
  spec = _write_task(tmp_path)
  out = tmp_path / "icl.json"
  done = subprocess.run(
      [sys.executable, "-m", "gpt_flax.icl", f"--checkpoint={workdir}", "--task=custom",
       f"--dataset={spec}", "--kind=choice", "--template=Review: {input}\\nSentiment:",
       "--candidates=bad,good", "--shots=0,2", "--num_examples=8", f"--output_json={out}"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "| k | accuracy | chance | majority (good) | mean shots used | n |" in done.stdout
  res = json.load(open(out))
  assert sorted(res["shots"]) == ["0", "2"] and res["checkpoint_step"] == 7
  assert res["task"]["template"] == "Review: {input}\nSentiment:"


def test_bad_input():
  with pytest.raises(ValueError, match="unknown task 'nope'; valid: debian_synopsis, sentiment"):
    icl.get_task("nope")
  with pytest.raises(ValueError, match="candidate list is empty"):
    icl.get_task("custom", dataset="jsonl:x", kind="choice", template="{input}")
  with pytest.raises(ValueError, match="candidate list is empty"):
    icl.get_task("sentiment", candidates=())
  with pytest.raises(ValueError, match="has no {input}"):
    icl.get_task("sentiment", template="Review:")
  with pytest.raises(ValueError, match="needs --dataset, --template"):
    icl.get_task("custom", kind="choice")
  with pytest.raises(ValueError, match="metric 'rouge' does not fit kind 'choice'"):
    icl.get_task("sentiment", metric="rouge")
  with pytest.raises(ValueError, match="expected a comma list"):
    icl.parse_shots("0,-1")
