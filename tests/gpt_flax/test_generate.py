"""GPT generation from a work dir: the CLI, sharded = single device, batch-invariant seeded
sampling, filters through the decoding path, phased cache growth, and bad input. (Greedy
ragged batches and the cached `Decoder` = full forward pass are in test_network.py; the
sampler alone in tests/common/test_decoding.py.)"""

import json
import os
import random
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from common import config as config_lib
from common import decoding, train_state
from common.tokenizer import train_sentencepiece
from common.vocab import load_vocab
from common.partitioning import Partitioner
from configs.gpt import get_config
from gpt_flax import generate as gen
from gpt_flax.model import GPTModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYLLABLES = ("ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "gu", "fa", "zo", "bi", "xe")
PROMPTS = ["kalo mi", "su", "tari pode gufa zobi xe ka lo"]


def make_workdir(root: str, step: int = 7) -> str:
  """A work dir as gpt_flax.train leaves it (config.json, vocab/, checkpoints/STEP/params),
  holding a freshly initialised tiny GPT and a small SentencePiece model."""
  rng = random.Random(0)
  words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(200)]
  texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
  sp = train_sentencepiece(texts, os.path.join(root, "sp", "sp.model"), vocab_size=400)
  cfg = get_config("tiny")
  cfg.data.tokenizer = sp
  model = GPTModel(cfg)
  setup = train_state.make_setup(model, cfg, Partitioner(1, 1, 1, devices=jax.devices()[:1]))
  params = train_state.init_state(setup)["params"]
  config_lib.save_config(cfg, root)
  load_vocab(sp).save_to(os.path.join(root, "vocab"))
  with ocp.CheckpointManager(os.path.join(root, "checkpoints")) as mgr:
    mgr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        meta=ocp.args.JsonSave({"identity": model.identity(), "step": step})))
    mgr.wait_until_finished()
  return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return make_workdir(str(tmp_path_factory.mktemp("gpt_run")))


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "gpt_flax.generate", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_generates_on_the_training_mesh_like_the_library_on_one_device(workdir, tmp_path):
  out = tmp_path / "out.jsonl"
  done = _cli(f"--workdir={workdir}", *(f"--prompt={p}" for p in PROMPTS), "--max_new_tokens=6",
              "--temperature=0.9", "--top_k=20", "--seed=3", "--batch_size=2",
              f"--output={out}")
  assert done.returncode == 0, done.stderr[-2000:]
  rows = [json.loads(l) for l in open(out)]
  assert [r["prompt"] for r in rows] == PROMPTS and rows[0]["checkpoint_step"] == 7
  # The CLI ran data-parallel over 8 fake devices; the library on one device agrees.
  model = gen.load(workdir)
  ref = gen.generate_text(model.setup.graphdef, jax.device_get(model.params), model.vocab,
                          PROMPTS, max_len=model.cfg.model.max_len, max_new_tokens=6, temperature=0.9,
                          top_k=20, seed=3)
  assert [r["completion"] for r in rows] == ref
  assert any(ref)


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, top_p=0.9, seed=5)])
def test_sharded_and_batched_generation_equal_single_device_one_at_a_time(workdir, sampling):
  model = gen.load(workdir, mesh=(2, 2, 2))
  prompts = [gen.encode_prompt(model.vocab, p) for p in PROMPTS]
  kw = dict(max_len=model.cfg.model.max_len, max_new_tokens=8, eos_id=model.vocab.eos_id,
            vocab_size=model.vocab.vocab_size, **sampling)
  sharded = gen.generate_tokens(model.setup.graphdef, model.params, prompts, batch_size=3,
                                partitioner=model.setup.partitioner, **kw)
  single = jax.device_get(model.params)
  alone = gen.generate_tokens(model.setup.graphdef, single, prompts, batch_size=1, **kw)
  assert sharded == alone and any(sharded)


def test_phased_cache_growth_decodes_the_same_tokens(workdir):
  """DECODE_PHASES grows the KV cache between decoding loops; on the training partitioner the
  continuations equal one loop over a full-length cache."""
  model = gen.load(workdir, mesh=(2, 2, 2))
  # Weights x4: at init scale a continuation hardly depends on its context, so a cache that
  # lost tokens would decode the same; scaled up, attention is sharp enough to notice.
  params = jax.tree.map(lambda p: p * 4, model.params)
  prompts = [gen.encode_prompt(model.vocab, p) for p in PROMPTS]
  kw = dict(max_len=model.cfg.model.max_len, max_new_tokens=40, eos_id=model.vocab.eos_id,
            vocab_size=model.vocab.vocab_size, partitioner=model.setup.partitioner)
  assert decoding.phase_ends(40, 4) == [20, 40]
  phased = gen.generate_tokens(model.setup.graphdef, params, prompts, phases=4, **kw)
  single = gen.generate_tokens(model.setup.graphdef, params, prompts, phases=1, **kw)
  assert phased == single and max(map(len, phased)) > 20  # some row decoded into phase 2


def test_top_k_one_sampling_is_greedy(workdir):
  model = gen.load(workdir, mesh=(2, 2, 2))
  prompts = [gen.encode_prompt(model.vocab, p) for p in PROMPTS]
  kw = dict(max_len=model.cfg.model.max_len, max_new_tokens=8, eos_id=model.vocab.eos_id,
            vocab_size=model.vocab.vocab_size, batch_size=1)  # shapes as above: compiled once
  single = jax.device_get(model.params)
  greedy = gen.generate_tokens(model.setup.graphdef, single, prompts, **kw)
  top1 = gen.generate_tokens(model.setup.graphdef, single, prompts, temperature=0.7, top_k=1,
                             seed=11, **kw)
  assert top1 == greedy


def test_bf16_params_cast_once_give_the_same_logits():
  cfg = get_config("tiny")
  cfg.model.dtype = "bfloat16"
  one_device = Partitioner(1, 1, 1, devices=jax.devices()[:1])
  setup = train_state.make_setup(GPTModel(cfg), cfg, one_device)
  params = train_state.init_state(setup)["params"]
  tokens = jax.random.randint(jax.random.key(1), (2, 10), 4, 512)
  kw = dict(positions_BxL=jnp.broadcast_to(jnp.arange(10), (2, 10)),
            segment_ids_BxL=jnp.ones((2, 10), jnp.int32))
  logits = jax.jit(lambda p: setup.merge(p)(tokens, **kw))
  np.testing.assert_array_equal(logits(params), logits(gen.inference_params(params, "bfloat16")))


def test_bad_input(workdir, tmp_path):
  model = gen.load(workdir)
  with pytest.raises(ValueError, match="exceeds the context window of 64"):
    gen.complete(model, ["ka " * 80], max_new_tokens=4)
  with pytest.raises(ValueError, match="top_p=0.0 must be in"):
    gen.complete(model, ["ka"], max_new_tokens=4, temperature=1.0, top_p=0.0)
  bare = tmp_path / "no_vocab"
  shutil.copytree(workdir, bare)
  shutil.rmtree(bare / "vocab")
  with pytest.raises(FileNotFoundError, match="tokenizer is missing"):
    gen.load(str(bare / "checkpoints"))
  with pytest.raises(FileNotFoundError, match="no config.json"):
    gen.load(str(tmp_path))
