"""What a scaling sweep trains: model sizes, step budgets, the presets, and each run's config
and its N and C (Kaplan's conventions, spelled out in gpt_flax/scaling.py)."""

from __future__ import annotations

import dataclasses
import math

from ml_collections import ConfigDict

from configs.gpt import get_config
from gpt_flax.model import GPTModel


@dataclasses.dataclass(frozen=True)
class Size:
  d_model: int
  num_layers: int
  num_heads: int

  @property
  def name(self) -> str:
    return f"d{self.d_model:04d}l{self.num_layers:02d}"


def parse_sizes(spec: str) -> tuple[Size, ...]:
  """'32x1,64x2,256x4x8' -> sizes (d_model x layers [x heads]; heads default to d_model/32,
  at least 2)."""
  sizes = []
  for item in spec.split(","):
    parts = item.strip().lower().split("x")
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
      raise ValueError(f"bad size {item!r} in {spec!r}; expected D_MODELxLAYERS[xHEADS], "
                       "e.g. 64x2 or 256x4x8")
    d, layers = int(parts[0]), int(parts[1])
    heads = int(parts[2]) if len(parts) == 3 else max(2, d // 32)
    if d % heads:
      raise ValueError(f"bad size {item!r}: d_model {d} is not divisible by {heads} heads")
    sizes.append(Size(d, layers, heads))
  return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Every size is trained at every step budget (a full cosine schedule per run)."""
  sizes: tuple[Size, ...]
  steps: tuple[int, ...]
  batch_size: int
  seq_len: int
  eval_batches: int
  evals_per_run: int = 2
  log_every: int = 10
  base_lr: float = 2e-3   # the demo preset's tuned rate at d_model 256
  vocab_size: int = 8192

  def learning_rate(self, size: Size) -> float:
    """base_lr at d_model 256, scaled by sqrt(256 / d_model): narrower nets take larger steps."""
    return round(self.base_lr * math.sqrt(256 / size.d_model), 6)


# Sized for 2 dedicated CPU cores: quick <= 10 min, cpu <= 60 min (from measured CPU time per
# step and per run; the cpu preset's run is in docs/results.md, scaling study).
PRESETS = {
    # 6 sizes, 12.8k..595k non-embedding params (46x), x 2 budgets (102k, 307k tokens).
    "quick": Sweep(sizes=parse_sizes("32x1,48x1,64x1,64x2,96x2,128x3"), steps=(100, 300),
                   batch_size=16, seq_len=64, eval_batches=16),
    # 7 sizes, 12.8k..3.2M non-embedding params (250x), x 3 budgets (164k, 410k, 819k tokens).
    "cpu": Sweep(sizes=parse_sizes("32x1,48x1,64x2,96x2,128x3,192x3,256x4"),
                 steps=(80, 200, 400), batch_size=16, seq_len=128, eval_batches=24,
                 evals_per_run=4),
}


@dataclasses.dataclass(frozen=True)
class Run:
  size: Size
  steps: int

  @property
  def name(self) -> str:
    return f"{self.size.name}_s{self.steps:06d}"


def plan(sweep: Sweep) -> list[Run]:
  """Smallest budget first, so an interrupted sweep already covers every size."""
  return [Run(size, steps) for steps in sorted(sweep.steps) for size in sweep.sizes]


def run_config(sweep: Sweep, run: Run, data: dict) -> ConfigDict:
  """The GPT config of one run: AdamW with a cosine schedule, no dropout, fp32."""
  s = run.size
  cfg = get_config("demo")
  # Every field pinned here, not inherited, so a change to the demo preset cannot change a study.
  cfg.model.update(vocab_size=sweep.vocab_size, max_len=sweep.seq_len, num_layers=s.num_layers,
                   d_model=s.d_model, num_heads=s.num_heads, d_ff=4 * s.d_model,
                   dtype="float32", dropout_rate=0.0, norm_eps=1e-5, scan_layers=True,
                   remat_policy="none")
  cfg.data.update(seq_len=sweep.seq_len, **data)
  every = max(1, run.steps // sweep.evals_per_run)
  cfg.train.update(batch_size=sweep.batch_size, num_steps=run.steps,
                   log_every=min(sweep.log_every, run.steps), eval_every=every,
                   eval_batches=sweep.eval_batches, checkpoint_every=every, keep_checkpoints=1)
  cfg.optimizer.update(name="adamw", learning_rate=sweep.learning_rate(s),
                       warmup_steps=max(1, min(100, run.steps // 10)), schedule="cosine",
                       end_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8,
                       clip_norm=1.0)
  cfg.sample.num_prompts = 0  # no samples after each run
  return cfg


def counts(cfg: ConfigDict) -> dict:
  """Parameter counts and training FLOPs per token of one config (see gpt_flax/scaling.py)."""
  model = GPTModel(cfg)
  c = model.net_cfg
  n = model.num_params(non_embedding=True)
  return {"N": n, "N_total": n + (c.vocab_size + c.max_len) * c.d_model,
          "flops_per_token": 6.0 * n + 12.0 * c.num_layers * c.d_model * cfg.data.seq_len,
          "flops_per_token_with_logits": model.flops_per_token()}
