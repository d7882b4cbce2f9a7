"""`python -m common.aot --plan`: which mesh / rules / remat / gradient accumulation to rent a
target with. Candidates are the (data, fsdp, tensor) factorisations of the device count
(tensor within a host), the rules presets, the remat policies and the accumulation steps the
batch allows. Each is laid out instantly (state bytes from the shard shapes); those whose
state + gradients already exceed the HBM are skipped, the rest ranked by an activation
estimate and their expected cost, and only the `--max_compiles` most promising are compiled
(minutes each on a small CPU machine). The table ranks the compiled ones: fits, peak, the
XLA / model FLOPs ratio and the MFU bound with the tokens per second each host must feed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ml_collections import ConfigDict

from common import config as config_lib
from common.aot_compile import (Compiled, Prepared, analytic_flops, bound, compile_step,
                                family_of, prepare, step_flops)
from common.aot_targets import GIB, REMAT_LADDER, Target, gib, input_cores, resolve
from common.mesh import MeshShape
from common.sharding import RULE_PRESETS

# Relative step cost of each remat policy (recomputed forward work), and per accumulation
# step and tensor-parallel doubling: rough priors that only order what to compile first.
_REMAT_COST = {"none": 1.0, "dots": 1.02, "dots_no_batch": 1.1, "full": 1.33}
_ACCUM_COST, _TENSOR_COST = 0.03, 0.1


@dataclasses.dataclass
class Candidate:
  data: int
  fsdp: int
  tensor: int
  rules: str
  remat: str
  accum: int
  state: float = 0.0          # params + optimizer + gradients per device, bytes
  estimate: float = 0.0       # state + estimated activations
  prep: Prepared | None = None
  compiled: Compiled | None = None
  configured: bool = False

  @property
  def overrides(self) -> dict[str, Any]:
    return {"mesh.data": self.data, "mesh.fsdp": self.fsdp, "mesh.tensor": self.tensor,
            "mesh.rules": self.rules, "model.remat_policy": self.remat,
            "train.grad_accum_steps": self.accum}

  @property
  def cost(self) -> float:
    return (_REMAT_COST[self.remat] * (1 + _ACCUM_COST * (self.accum - 1))
            * (1 + _TENSOR_COST * math.log2(self.tensor)))

  def flags(self) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in self.overrides.items())


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def layout_rules(fsdp: int, tensor: int, rules: str) -> str:
  """The simplest preset giving the same layout: without a tensor axis fsdp_tp lays out as
  fsdp, and without an fsdp axis either as data_parallel."""
  if tensor == 1 and rules == "fsdp_tp":
    rules = "fsdp"
  return "data_parallel" if fsdp == 1 and rules == "fsdp" else rules


def meshes(target: Target, batch: int) -> list[tuple[int, int, int, str]]:
  """(data, fsdp, tensor, rules) the batch divides, tensor within a host, each layout once;
  over several slices the data or fsdp axis must span them."""
  out = set()
  for tensor in (t for t in _divisors(target.devices_per_host) if t <= 8):
    for fsdp in _divisors(target.num_devices // tensor):
      data = target.num_devices // (tensor * fsdp)
      if batch % (data * fsdp) or batch % target.num_hosts or (
          data % target.num_slices and fsdp % target.num_slices):
        continue
      for rules in RULE_PRESETS:
        if rules != "data_parallel" or tensor == 1:
          out.add((data, fsdp, tensor, layout_rules(fsdp, tensor, rules)))
  return sorted(out)


def activation_estimate(prep: Prepared, c: Candidate) -> float:
  """Bytes per device a step keeps for the backward pass, roughly (for ordering only): per
  token and layer the outputs the policy saves, the attention scores where kept, the logits
  and their gradient in fp32, and one layer's working set."""
  m = prep.cfg.model
  elem = 2 if m.dtype == "bfloat16" else 4
  rows = prep.cfg.train.batch_size / (c.data * c.fsdp * c.accum)
  d, ff, heads = m.d_model, m.d_ff, m.num_heads
  saved = {"none": 8 * d + 2 * ff, "dots": 5 * d + ff, "dots_no_batch": 5 * d + ff, "full": d}
  scores = {"none": 2, "dots": 1, "dots_no_batch": 0, "full": 0}
  if prep.family == "t5":
    s, t = prep.model.input_len, prep.model.target_len
    stacks = [(m.num_encoder_layers, s, s), (m.num_decoder_layers, t, t + s)]
    out_len = t
  else:
    seq = prep.cfg.data.seq_len
    stacks, out_len = [(m.num_layers, seq, seq)], seq
  total = 0.0
  for layers, q, k in stacks:
    per_layer = q * saved[c.remat] * elem + scores[c.remat] * heads * q * k * 4 / c.tensor
    total += layers * per_layer
  working = max(q * (4 * d + 2 * ff) * elem + 2 * heads * q * k * 4 for _, q, k in stacks)
  logits = out_len * m.vocab_size * 8 / c.tensor
  return rows * (total + working / c.tensor + logits)


def plan(spec: str, cfg: ConfigDict, target_name: str, *, max_compiles: int = 4,
         hbm_gib: float = 0.0) -> list[Candidate]:
  """Prints the ranked table; returns the candidates (compiled ones carry their results)."""
  target = resolve(target_name)
  family = family_of(spec)
  hbm = hbm_gib * GIB if hbm_gib else target.chip.hbm_bytes
  devices = target.devices()
  batch = cfg.train.batch_size
  try:
    sizes = MeshShape(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor).resolve(target.num_devices)
  except ValueError:
    sizes = None
  rules = layout_rules(sizes[1], sizes[2], cfg.mesh.rules) if sizes else cfg.mesh.rules
  now = (sizes, rules, cfg.model.get("remat_policy", "none"), cfg.train.grad_accum_steps)
  layouts, invalid = {}, []
  for data, fsdp, tensor, rules in meshes(target, batch):
    over = {"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor, "mesh.rules": rules,
            "train.grad_accum_steps": 1}
    try:
      layouts[(data, fsdp, tensor, rules)] = prepare(
          family, config_lib.apply_overrides(cfg, over), target, devices)
    except ValueError as e:
      invalid.append(f"{data}x{fsdp}x{tensor} {rules}: {e}")
  cands = []
  for (data, fsdp, tensor, rules), prep in layouts.items():
    rows = batch // (data * fsdp)
    for remat in REMAT_LADDER:
      for accum in (a for a in (1, 2, 4, 8, 16) if rows % a == 0):
        c = Candidate(data, fsdp, tensor, rules, remat, accum, prep=prep)
        c.configured = now == ((data, fsdp, tensor), rules, remat, accum)
        c.state = 2 * prep.params_bytes + prep.opt_bytes
        c.estimate = c.state + activation_estimate(prep, c)
        cands.append(c)
  skipped = [c for c in cands if c.state > hbm]
  likely = sorted((c for c in cands if c.state <= hbm),
                  key=lambda c: (not c.configured, c.estimate > hbm, c.cost, c.estimate))
  print(f"plan for {target.name} ({target.num_devices} devices, {gib(hbm)} HBM each): "
        f"{len(cands)} candidates, {len(skipped)} skipped (params + gradients + optimizer > "
        f"HBM), {len(invalid)} mesh layouts refused, compiling up to {max_compiles}",
        flush=True)
  for line in invalid[:3]:
    print(f"  refused: {line[:200]}", flush=True)
  flops: dict[str, float] = {}
  done = []
  for c in _diverse(likely, max_compiles):
    c.prep = prepare(family, config_lib.apply_overrides(cfg, c.overrides), target, devices)
    c.compiled = compile_step(c.prep, "train")
    print(f"  compiled {c.flags()}: {_status(c, hbm)} in {c.compiled.compile_s:.0f} s",
          flush=True)
    if c.remat not in flops and not c.compiled.oom:
      flops[c.remat] = step_flops(family, c.prep.cfg, "train")
    done.append(c)
  _table(done, flops, hbm)
  rest = [c for c in likely if c.compiled is None]
  print(f"{len(rest)} candidates not compiled (--max_compiles={max_compiles}); "
        f"{sum(c.estimate > hbm for c in rest)} of them estimated over the HBM", flush=True)
  return cands


def _diverse(ordered: list[Candidate], n: int) -> list[Candidate]:
  """The first `n`, one per (rules, tensor, remat, accum) before any repeats: meshes that
  differ only in data x fsdp compile to much the same program."""
  seen, first, later = set(), [], []
  for c in ordered:
    key = (c.rules, c.tensor, c.remat, c.accum)
    (later if key in seen else first).append(c)
    seen.add(key)
  return (first + later)[:n]


def _status(c: Candidate, hbm: float) -> str:
  if c.compiled.oom:
    return "out of memory (compiler)"
  return f"peak {gib(c.compiled.peak)}" + (" (over HBM)" if c.compiled.peak > hbm else "")


def _fits(c: Candidate, hbm: float) -> bool:
  return not c.compiled.oom and c.compiled.peak <= hbm


def _table(done: list[Candidate], flops: dict[str, float], hbm: float) -> None:
  rows = []
  for c in done:
    b = (bound(c.prep, c.compiled, flops[c.remat]) if _fits(c, hbm) and c.remat in flops
         else None)
    rows.append((c, b))
  rows.sort(key=lambda r: (not _fits(r[0], hbm), -(r[1].mfu if r[1] else 0.0)))
  head = (f"{'#':>2} {'fits':4} {'peak GiB':>8} {'state GiB':>9} {'data x fsdp x tensor':>20} "
          f"{'rules':13} {'remat':13} {'accum':>5} {'FLOPs ratio':>11} {'step >= ms':>10} "
          f"{'MFU <=':>6} {'tok/s/host':>11} {'input cores':>11} {'compile s':>9}")
  print(head)
  for i, (c, b) in enumerate(rows, 1):
    ratio = (f"{flops[c.remat] / analytic_flops(c.prep, 'train'):.2f}" if c.remat in flops
             else "-")
    peak = "OOM" if c.compiled.oom else f"{c.compiled.peak / GIB:.2f}"
    mesh = f"{c.prep.partitioner.sizes[0]} x {c.prep.partitioner.sizes[1]} x {c.tensor}"
    print(f"{i:>2} {'yes' if _fits(c, hbm) else 'no':4} {peak:>8} {c.state / GIB:>9.2f} "
          f"{mesh + ('*' if c.configured else ''):>20} {c.rules:13} {c.remat:13} {c.accum:>5} "
          f"{ratio:>11} {(f'{b.step_s * 1e3:,.1f}' if b else '-'):>10} "
          f"{(f'{b.mfu:.0%}' if b else '-'):>6} "
          f"{(f'{b.tokens_per_s_host:,.0f}' if b else '-'):>11} "
          f"{(input_cores(c.prep.family, b.tokens_per_s_host) if b else '-'):>11} "
          f"{c.compiled.compile_s:>9.0f}")
  if rows and _fits(rows[0][0], hbm):
    print(f"best: {rows[0][0].flags()}   (* = the configured layout)")
