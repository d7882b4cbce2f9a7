"""Resume (bitwise), gradient accumulation, NaN guard, work-dir identity, config checks."""

import json
import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common import hooks, steps, train_state, trainer
from common.partitioning import Partitioner
from configs.gpt import get_config
from gpt_flax.model import GPTModel
from tests.fakes import SyntheticLM, step_losses


def _train(cfg, workdir, partitioner=None, **kw):
  partitioner = partitioner or Partitioner(2, 2, 2)
  return trainer.train(GPTModel(cfg), cfg, str(workdir), partitioner=partitioner,
                       make_train_iter=lambda: SyntheticLM(cfg.train.batch_size, cfg.data.seq_len,
                                                           cfg.model.vocab_size),
                       make_eval_iter=lambda: SyntheticLM(cfg.train.batch_size, cfg.data.seq_len,
                                                          cfg.model.vocab_size, seed=99), **kw)


def _losses(result):
  return [h["loss"] for h in result.history]


def test_resume_is_bitwise_identical(tmp_path):
  cfg = get_config("tiny")  # 6 steps, checkpoint every 3
  straight = _train(cfg, tmp_path / "a")
  first = get_config("tiny")
  first.train.num_steps = 3
  part1 = _train(first, tmp_path / "b")
  part2 = _train(cfg, tmp_path / "b")  # resumes from step 3, data position included
  assert part2.start_step == 3
  assert _losses(part1) + _losses(part2) == _losses(straight)  # bitwise on CPU
  for a, b in zip(jax.tree.leaves(straight.state["params"]), jax.tree.leaves(part2.state["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Outputs of a run: metrics log, TensorBoard events, eval metrics.
  lines = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
  assert any("eval/loss" in l for l in lines) and any("train/tokens_per_sec" in l for l in lines)
  events = EventAccumulator(str(tmp_path / "a" / "tensorboard"))
  events.Reload()
  assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
  assert "eval/perplexity" in events.Tags()["scalars"]


def test_training_reduces_loss(tmp_path):
  cfg = get_config("tiny")
  cfg.train.update(num_steps=30, checkpoint_every=30, log_every=10, eval_every=30)
  cfg.optimizer.learning_rate = 1e-2
  result = _train(cfg, tmp_path)
  losses = _losses(result)
  assert np.mean(losses[-5:]) < losses[0] - 0.5, losses


def test_grad_accumulation_matches_full_batch():
  cfg = get_config("tiny")
  partitioner = Partitioner(4, 1, 2)
  out = {}
  for accum in (1, 2):
    cfg.train.grad_accum_steps = accum
    out[accum] = step_losses(cfg, partitioner, num_steps=2)[2]
  np.testing.assert_allclose(out[1], out[2], atol=1e-5)


def test_throughput_counts_input_tokens_when_the_loss_weights_part_of_a_row():
  """With a loss on part of each row (GPT's `data.loss_regex`), the loss is still the mean
  over the weighted tokens, while `tokens` (tokens/s, MFU) counts every real input token."""
  cfg = get_config("tiny")
  partitioner = Partitioner(4, 1, 2)
  setup = train_state.make_setup(GPTModel(cfg), cfg, partitioner)
  batch = next(SyntheticLM(cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size))
  half = dict(batch, weights=batch["weights"] * (np.arange(cfg.data.seq_len) % 2))
  sums = jax.device_get(steps.make_eval_step(setup)(train_state.init_state(setup)["params"],
                                                      partitioner.global_batch(half)))
  real = float((batch["segment_ids"] > 0).sum())
  assert sums["input_tokens"] == real and sums["weights"] == float(half["weights"].sum()) < real
  _, metrics = steps.make_train_step(setup)(train_state.init_state(setup),
                                              partitioner.global_batch(half))
  assert float(metrics["tokens"]) == real and "input_tokens" not in metrics
  np.testing.assert_allclose(float(metrics["loss"]), sums["loss"] / sums["weights"], rtol=1e-5)


def test_nan_loss_stops_before_checkpoint(tmp_path):
  cfg = get_config("tiny")
  cfg.optimizer.update(learning_rate=1e30, warmup_steps=0, clip_norm=0.0)
  with pytest.raises(hooks.Divergence, match="non-finite training loss at step"):
    _train(cfg, tmp_path)
  ckpts = tmp_path / "checkpoints"
  assert not ckpts.exists() or not [d for d in os.listdir(ckpts) if d.isdigit()]


def test_workdir_of_a_different_model_is_refused(tmp_path):
  cfg = get_config("tiny")
  cfg.train.num_steps = 3
  _train(cfg, tmp_path)
  other = get_config("tiny")
  other.model.d_model = 128
  with pytest.raises(ValueError, match="different model.*d_model") as err:
    _train(other, tmp_path)
  assert "--config.model.d_model=64" in str(err.value)  # how to resume it instead


def test_grad_accum_must_divide_batch():
  cfg = get_config("tiny")
  cfg.train.grad_accum_steps = 3
  with pytest.raises(ValueError, match="grad_accum_steps"):
    train_state.check_config(cfg, Partitioner(2, 1, 1, devices=jax.devices()[:2]))


def test_init_from_loads_the_weights_and_counts_steps_from_zero(tmp_path):
  cfg = get_config("tiny")
  cfg.train.num_steps = 3
  _train(cfg, tmp_path / "pre")
  fine = get_config("tiny")
  fine.train.num_steps = 2
  result = _train(fine, tmp_path / "fine", init_from=str(tmp_path / "pre"))
  assert result.start_step == 0 and [h["step"] for h in result.history] == [1, 2]
  # The first fine-tuning step starts from the pretrained weights, not a fresh init.
  fresh = _train(fine, tmp_path / "fresh")
  assert result.history[0]["loss"] < fresh.history[0]["loss"]
