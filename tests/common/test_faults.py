"""Nothing lost: a damaged checkpoint falls back to the previous one, a full disk leaves no
partial save, no checkpoint is rotated away unasked, divergence stops at a checkpoint that
resumes, and kill -9 anywhere (mid-save too) resumes bit for bit with one metrics row a step."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common import hooks
from common.checkpoint import DAMAGED_DIR, CheckpointError, Checkpointer
from tests import fakes
from tests.common.test_trainer import _train
from configs.gpt import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(num_steps: int, **train):
  cfg = get_config("tiny")
  cfg.train.update(dict(num_steps=num_steps, checkpoint_every=2, log_every=1,
                        keep_checkpoints=3) | train)
  cfg.optimizer.update(schedule="constant", warmup_steps=0)
  return cfg


def _losses(result):
  return [h["loss"] for h in result.history]


def test_keep_checkpoints_below_one_or_below_what_exists_is_refused(tmp_path):
  with pytest.raises(ValueError, match="keep_checkpoints=0 must be >= 1"):
    _train(_cfg(2, keep_checkpoints=0), tmp_path / "a")
  _train(_cfg(6), tmp_path / "b")  # checkpoints 2, 4, 6
  with pytest.raises(ValueError, match=r"holds 3 checkpoints .*keep_checkpoints=1 would "
                     r"delete the oldest 2.*prune_checkpoints=True"):
    _train(_cfg(8, keep_checkpoints=1), tmp_path / "b")
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["2", "4", "6"]
  _train(_cfg(8, keep_checkpoints=1, prune_checkpoints=True), tmp_path / "b")
  assert sorted(d for d in os.listdir(tmp_path / "b" / "checkpoints")) == ["8"]


@pytest.mark.parametrize("damage", ["truncate", "delete", "overwrite"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, capsys):
  whole = _train(_cfg(8), tmp_path / "whole")
  _train(_cfg(6), tmp_path / "wd")
  params = tmp_path / "wd" / "checkpoints" / "6" / "params"
  files = sorted(p for p in params.rglob("*") if p.is_file() and p.stat().st_size > 64)
  victim = max(files, key=lambda p: p.stat().st_size)
  if damage == "truncate":
    victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])
  elif damage == "delete":
    shutil.rmtree(params)
  else:
    victim.write_bytes(os.urandom(victim.stat().st_size))
  resumed = _train(_cfg(8), tmp_path / "wd")
  out = capsys.readouterr().out
  assert "warning: checkpoint 6 could not be restored" in out
  assert resumed.start_step == 4 and [h["step"] for h in resumed.history] == [5, 6, 7, 8]
  np.testing.assert_array_equal(_losses(resumed), _losses(whole)[4:])
  moved = os.listdir(tmp_path / "wd" / "checkpoints" / DAMAGED_DIR)
  assert len(moved) == 1 and moved[0].startswith("6-")  # kept aside, not deleted


def test_a_failed_save_leaves_no_partial_directory_and_one_line(tmp_path, monkeypatch):
  """The save path of a full disk, without one: Orbax fails after creating its temp dir."""
  _train(_cfg(2), tmp_path)
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)

  def full_disk(step, args, force=False):
    del args, force
    os.makedirs(tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-1", exist_ok=True)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ckpt.manager, "save", full_disk)
  state = {"step": 4, "params": {}, "opt_state": {}}
  with pytest.raises(CheckpointError, match=r"saving checkpoint 4 .* failed: No space left on "
                     r"device; the "
                     r"partial save was removed; intact checkpoints: \[2\]"):
    ckpt.save(4, state, fakes.SyntheticLM(), {})
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def _tmpfs(path, size: str) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0


def test_disk_full_is_one_line_and_earlier_checkpoints_stay_intact(tmp_path):
  """A real full disk (a small tmpfs) where this machine lets us mount one; otherwise the
  monkeypatched test above stands in for it."""
  disk = tmp_path / "disk"
  if not _tmpfs(disk, "2600k"):
    pytest.xfail("cannot mount a tmpfs here; the failed-save test covers the save path")
  try:
    root, tokenizer = _corpus(tmp_path)
    done = _cli(disk / "wd", root, tokenizer, num_steps=12, wait=True)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr
    names = os.listdir(disk / "wd" / "checkpoints")
    assert names and all(n.isdigit() for n in names), names  # no temporary dir left
    ckpt = Checkpointer(str(disk / "wd" / "checkpoints"))
    assert ckpt.latest_step() is not None
  finally:
    subprocess.run(["umount", str(disk)], check=False)


def test_divergence_stops_before_a_bad_checkpoint_and_names_one_that_resumes(tmp_path):
  _train(_cfg(12, checkpoint_every=4), tmp_path)  # healthy: checkpoints 4, 8, 12
  wild = _cfg(60, checkpoint_every=4)
  wild.optimizer.learning_rate = 1e3  # as a mistyped flag would
  with pytest.raises(hooks.Divergence, match=r"(loss spike|non-finite).*resume from "
                     r"checkpoint (\d+)") as err:
    _train(wild, tmp_path)
  named = int(str(err.value).split("resume from checkpoint ")[1].split(" ")[0])
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert named >= 12 and saved[-1] == named  # later ones (loss rising) were moved aside
  sane = _cfg(named + 4, checkpoint_every=4)  # the preset's learning rate: trains again
  resumed = _train(sane, tmp_path)
  assert resumed.start_step == named and np.all(np.isfinite(_losses(resumed)))
  assert max(_losses(resumed)) < 7  # ln(512) = 6.2 at initialisation: not a diverged model


def test_a_checkpoint_of_another_optimizer_is_an_error_not_damage(tmp_path):
  _train(_cfg(4), tmp_path)
  other = _cfg(8)
  other.optimizer.clip_norm = 0.0  # no clipping transform: another optimizer-state structure
  with pytest.raises(ValueError, match=r"checkpoint 4 .* does not fit this run's model and "
                     r"optimizer .*clip_norm"):
    _train(other, tmp_path)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]  # nothing moved aside


def test_the_guard_names_the_last_healthy_checkpoint_of_a_creeping_divergence():
  guard = hooks.DivergenceGuard(spike_factor=3.0, min_history=4)
  m = lambda loss: {"loss": loss, "grad_norm": 1.0, "learning_rate": 1e-3}
  for step, loss in enumerate([6.0, 5.0, 4.0, 3.0, 3.0, 3.1, 2.9, 3.0], 1):
    guard.check(step, m(loss), None)
  assert guard.healthy() and guard.best_median == 3.0
  for step, loss in enumerate([3.5, 4.0, 4.5, 5.0], 9):  # creeping up: not a spike yet
    guard.check(step, m(loss), 8)
  assert not guard.healthy()  # a checkpoint now would not be named
  with pytest.raises(hooks.Divergence, match=r"loss spike \(16 > 3 x the median .* step 13.*"
                     r"resume from checkpoint 8"):
    guard.check(13, m(16.0), 8)
  with pytest.raises(hooks.Divergence, match="non-finite training loss at step 14"):
    guard.check(14, m(float("nan")), 8)
  resumed = hooks.DivergenceGuard(spike_factor=3.0, min_history=4, best_median=3.0)
  resumed.check(1, m(5.0), None)
  assert not resumed.healthy()  # a resumed run still knows what healthy looked like


# ---------------------------------------------------------------- kill -9 through the CLI


def _corpus(tmp_path):
  root = tmp_path / "corpus"
  root.mkdir(exist_ok=True)
  return root, fakes.word_corpus(root, (("train", 200), ("validation", 30)))


def _cli(workdir, root, tokenizer, *, num_steps: int, wait: bool):
  args = [sys.executable, "-m", "gpt_flax.train", "--config=configs/gpt.py:tiny",
          f"--workdir={workdir}", f"--config.data.dataset=jsonl:{root}/{{split}}.jsonl",
          f"--config.data.tokenizer={tokenizer}", "--config.data.text_field=body",
          f"--config.data.data_dir={root}", f"--config.train.num_steps={num_steps}",
          "--config.train.log_every=1", "--config.train.checkpoint_every=2",
          "--config.train.async_checkpoint=True", "--config.train.eval_every=1000",
          "--config.sample.num_prompts=0"]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  if wait:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if "train/loss" in l]


def _kill_when(proc, ready, deadline_s: float = 120) -> None:
  start = time.time()
  while not ready() and proc.poll() is None and time.time() - start < deadline_s:
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, "the run ended before the kill point"


def test_kill_9_mid_save_and_mid_step_resumes_bit_identical(tmp_path):
  root, tokenizer = _corpus(tmp_path)
  reference = _cli(tmp_path / "ref", root, tokenizer, num_steps=10, wait=True)
  assert reference.returncode == 0, reference.stderr[-2000:]
  want = [r["train/loss"] for r in _rows(tmp_path / "ref")]
  rng = np.random.default_rng(0)
  kills = {  # while a checkpoint's temporary directory exists; at a random step
      "mid_save": lambda wd: any(".orbax-checkpoint-tmp" in n for n in
                                 os.listdir(wd / "checkpoints")) if (wd / "checkpoints").exists()
                  else False,
      "mid_run": lambda wd, k=int(rng.integers(3, 8)): (wd / "metrics.jsonl").exists() and len(
          (wd / "metrics.jsonl").read_text().splitlines()) >= k}
  for name, ready in kills.items():
    wd = tmp_path / name
    _kill_when(_cli(wd, root, tokenizer, num_steps=10, wait=False), lambda: ready(wd))
    done = _cli(wd, root, tokenizer, num_steps=10, wait=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(wd)
    assert [r["step"] for r in rows] == list(range(1, 11)), name  # one row per step
    assert [r["train/loss"] for r in rows] == want, name  # bit for bit
