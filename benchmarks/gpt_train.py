"""GPT training throughput: our trainer (JAX/Flax NNX) vs Hugging Face GPT2LMHeadModel (PyTorch).

Both train the same GPT-2-style decoder (configs/gpt.py preset `bench`: vocab 8192, 6 layers,
d_model 512, 8 heads, d_ff 2048, seq 256, batch 8, tied embeddings, dropout 0) with AdamW
(lr 3e-4, wd 0.1 on matrices only, betas 0.9/0.95, eps 1e-8, global-norm clip 1.0) on the
same synthetic random-token batches, in one process on the real devices (one CPU device).

Four configurations, interleaved trial by trial (the order rotates every trial) so machine
noise hits them alike:

  ours fp32   params and compute fp32
  ours bf16   `model.dtype=bfloat16`: fp32 params, bf16 matmul inputs, fp32 accumulation
  HF   fp32   GPT2LMHeadModel, fp32
  HF   bf16   the same model under torch.autocast(device_type='cpu', dtype=torch.bfloat16)

Each trial times up to `--steps` training steps (fewer once it has run `--max_trial_s`, at
least one) after a warm-up (compilation, allocator). Reported: median tokens/s over trials;
MFU = tokens/s x flops_per_token / peak, with ONE flops_per_token for both
(GPTModel.flops_per_token(): PaLM's 6N + 12 L d T) and the peak from
common.metrics.peak_flops(dtype); the process CPU utilisation (CPU seconds / wall seconds)
while timing, which shows whether a framework used all cores (torch gets
torch.set_num_threads(cores); XLA's CPU client sizes its thread pool to the cores by itself);
and tokens per CPU-second, which other processes competing for the cores disturb far less
than tokens/s (use it to compare on a busy machine).

  PYTHONPATH=. python benchmarks/gpt_train.py     # ~5 min on an idle 2-core AVX-512 machine
  PYTHONPATH=. python benchmarks/gpt_train.py --steps 2 --trials 2 --only ours

On a CPU without native bf16 (no avx512_bf16: torch's oneDNN bf16 path is then unavailable)
one HF bf16 step takes ~2 minutes and dominates the run (~15 minutes in all).

Extra variants of ours (any config override) can be timed in the same interleaving, e.g.
`--variant scanned:model.scan_layers=True --variant remat:model.remat_policy=full`; each runs
in both precisions unless `--precisions` restricts them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import harness  # noqa: E402  (imports no JAX)

harness.use_real_cpu()

import jax  # noqa: E402
import numpy as np  # noqa: E402


from benchmarks.variants import parse_variant  # noqa: E402
from common import metrics as metrics_lib  # noqa: E402
from common import allocator, steps, train_state  # noqa: E402
from common.config import apply_overrides  # noqa: E402
from common.partitioning import Partitioner  # noqa: E402
from configs.gpt import get_config  # noqa: E402
from gpt_flax.model import GPTModel  # noqa: E402



def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=4, help="timed steps per trial")
  p.add_argument("--trials", type=int, default=3, help="trials per configuration (median)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps before the first trial")
  p.add_argument("--max_trial_s", type=float, default=20.0,
                 help="a trial stops early (after at least one step) once it has run this long; 0: off")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--threads", type=int, default=0,
                 help="torch intra-op threads (default: all cores available to this process)")
  p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
  p.add_argument("--only", choices=("ours", "hf"), default=None, help="run one side only")
  p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VAL[,KEY=VAL]",
                 help="an extra 'ours' row with config overrides, e.g. "
                      "scanned:model.scan_layers=True")
  p.add_argument("--hf_attn", default="sdpa", help="HF attn_implementation (sdpa or eager)")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  a.precisions = harness.parse_precisions(p, a.precisions)
  if min(a.steps, a.trials, a.batch, a.seq) < 1 or a.warmup < 0 or a.max_trial_s < 0:
    p.error("--steps, --trials, --batch, --seq must be >= 1; --warmup, --max_trial_s >= 0")
  return a


def bench_config(batch: int, seq: int, dtype: str, overrides: dict | None = None):
  cfg = get_config("bench")
  cfg.data.seq_len = seq
  cfg.model.max_len = seq
  cfg.model.dtype = dtype
  cfg.model.dropout_rate = 0.0
  cfg.train.batch_size = batch
  return apply_overrides(cfg, overrides or {})


def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[np.ndarray]:
  """Random token rows [B, L+1]: inputs are [:, :-1], next-token targets [:, 1:]."""
  rng = np.random.default_rng(seed)
  return [rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32) for _ in range(n)]


class Runner:
  """One configuration: `step()` runs one training step; `sync()` waits for the device."""
  name: str
  precision: str

  def step(self) -> None: ...

  def sync(self) -> float: ...


class OursRunner(Runner):

  def __init__(self, name: str, precision: str, cfg, batches: list[np.ndarray]):
    self.name, self.precision, self.cfg = name, precision, cfg
    self.model = GPTModel(cfg)
    self.partitioner = Partitioner(1, 1, 1)
    setup = train_state.make_setup(self.model, cfg, self.partitioner)
    self.state = train_state.init_state(setup)
    self.train_step = steps.make_train_step(setup)
    b, L = batches[0].shape[0], batches[0].shape[1] - 1
    common = {"segment_ids": np.ones((b, L), np.int32),
              "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (b, L)).copy(),
              "weights": np.ones((b, L), np.float32)}
    self.batches = [self.partitioner.global_batch({"inputs": t[:, :-1].copy(),
                                                   "targets": t[:, 1:].copy(), **common})
                    for t in batches]
    self.i, self.metrics = 0, None

  def step(self) -> None:
    self.state, self.metrics = self.train_step(self.state, self.batches[self.i % len(self.batches)])
    self.i += 1

  def sync(self) -> float:
    jax.block_until_ready((self.state, self.metrics))
    return float(self.metrics["loss"])

  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.state["params"]))


class HFRunner(Runner):

  def __init__(self, precision: str, cfg, batches: list[np.ndarray], attn: str, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    self.torch = torch
    self.name, self.precision = "HF", precision
    m = cfg.model
    hf_cfg = GPT2Config(vocab_size=m.vocab_size, n_positions=m.max_len, n_embd=m.d_model,
                        n_layer=m.num_layers, n_head=m.num_heads, n_inner=m.d_ff,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, layer_norm_epsilon=m.norm_eps,
                        tie_word_embeddings=True, use_cache=False)
    torch.manual_seed(seed)
    self.model = GPT2LMHeadModel._from_config(hf_cfg, attn_implementation=attn)
    self.model.train()
    assert self.model.lm_head.weight.data_ptr() == self.model.transformer.wte.weight.data_ptr()
    self.attn = self.model.config._attn_implementation
    decay = [p for p in self.model.parameters() if p.ndim >= 2]
    no_decay = [p for p in self.model.parameters() if p.ndim < 2]
    o = cfg.optimizer
    kw = dict(lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # transformers' Trainer default on torch >= 2.8 is `adamw_torch_fused`; fall back if the
    # fused CPU kernel is unavailable.
    try:
      self.opt = torch.optim.AdamW(groups, fused=True, **kw)
      self.optimizer_kind = "AdamW(fused)"
    except (RuntimeError, ValueError):
      self.opt = torch.optim.AdamW(groups, **kw)
      self.optimizer_kind = "AdamW"
    self.clip = o.clip_norm
    self.batches = [torch.from_numpy(t.astype(np.int64)) for t in batches]
    self.i, self.loss = 0, None

  def step(self) -> None:
    torch = self.torch
    tokens = self.batches[self.i % len(self.batches)]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    self.opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16,
                        enabled=self.precision == "bf16"):
      logits = self.model(input_ids=inputs).logits
    # Same objective as ours: mean next-token cross-entropy over all B*L positions, in fp32.
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    self.loss = loss
    self.i += 1

  def sync(self) -> float:
    return float(self.loss.detach())  # CPU: eager, already done

  def num_params(self) -> int:
    return sum(p.numel() for p in self.model.parameters())


def main(argv=None) -> None:
  args = parse_args(argv)
  import torch
  cores = harness.cores()
  threads = args.threads or cores
  torch.set_num_threads(threads)
  devices = jax.devices()
  if len(devices) != 1 or devices[0].platform != "cpu":
    print(f"note: devices are {devices}; the benchmark uses a mesh of all of them")

  base = bench_config(args.batch, args.seq, "float32")
  vocab = base.model.vocab_size
  batches = make_batches(4, args.batch, args.seq, vocab, args.seed)
  tokens_per_step = args.batch * args.seq
  flops_per_token = GPTModel(base).flops_per_token()

  variants = [("ours", {})] + [parse_variant(v) for v in args.variant]
  runners: list[Runner] = []
  for prec in args.precisions:
    dtype = harness.PRECISIONS[prec]
    if args.only != "hf":
      for vname, ov in variants:
        runners.append(OursRunner(vname, prec, bench_config(args.batch, args.seq, dtype, ov),
                                  batches))
    if args.only != "ours":
      runners.append(HFRunner(prec, base, batches, args.hf_attn, args.seed))

  print(f"# GPT training benchmark: {platform.processor() or platform.machine()}, "
        f"{cores} cores, load average {os.getloadavg()[0]:.2f} at start")
  print(f"# {allocator.describe()} (both frameworks; common/allocator.py)")
  print(f"# jax {jax.__version__} devices={devices}; torch {torch.__version__} "
        f"num_threads={torch.get_num_threads()}", end="")
  hf = [r for r in runners if isinstance(r, HFRunner)]
  if hf:
    import transformers
    print(f"; transformers {transformers.__version__} attn={hf[0].attn} "
          f"optimizer={hf[0].optimizer_kind}", end="")
  print()
  m = base.model
  print(f"# model: vocab {m.vocab_size}, {m.num_layers} layers, d_model {m.d_model}, "
        f"{m.num_heads} heads, d_ff {m.d_ff}, seq {args.seq}, batch {args.batch} "
        f"({tokens_per_step} tokens/step); params: "
        + ", ".join(f"{r.name} {r.precision} {r.num_params():,}" for r in runners[:2]))
  print(f"# flops/token {flops_per_token / 1e6:.1f} MFLOP (6N + 12LdT); peak "
        + ", ".join(f"{p} {metrics_lib.peak_flops(harness.PRECISIONS[p]) / 1e9:.0f} GFLOP/s"
                    for p in args.precisions) + " (common.metrics.peak_flops)")
  print(f"# {args.trials} trials x up to {args.steps} steps (at most ~{args.max_trial_s:g}s a "
        f"trial), after {args.warmup} warm-up steps",
        flush=True)

  for r in runners:
    t0 = time.perf_counter()
    for _ in range(max(args.warmup, 1)):
      r.step()
    loss = r.sync()
    print(f"# warm-up {r.name} {r.precision}: {time.perf_counter() - t0:.1f}s "
          f"(loss {loss:.3f})", flush=True)

  results = {id(r): [] for r in runners}
  for trial in range(args.trials):
    order = runners[trial % len(runners):] + runners[:trial % len(runners)]
    line = []
    for r in order:
      tps, util, loss, n = harness.time_trial(r, args.steps, tokens_per_step, args.max_trial_s)
      if not np.isfinite(loss):
        raise SystemExit(f"error: {r.name} {r.precision} loss is {loss}")
      results[id(r)].append((tps, util))
      line.append(f"{r.name} {r.precision} {tps:,.0f} tok/s ({n} steps, {util:.2f} cores)")
    print(f"# trial {trial + 1}: " + "; ".join(line), flush=True)

  med = {id(r): (statistics.median(t for t, _ in results[id(r)]),
                 statistics.median(u for _, u in results[id(r)]),
                 statistics.median(t / max(u, 1e-9) for t, u in results[id(r)]))
         for r in runners}
  hf_by_prec = {r.precision: med[id(r)][0] for r in runners if isinstance(r, HFRunner)}
  print()
  print(f"# load average {os.getloadavg()[0]:.2f} at the end. 'CPU cores used' = process CPU "
        "seconds / wall seconds while timing; 'tokens/CPU-s' (tokens per CPU-second) is less "
        "sensitive to other processes competing for the cores than tokens/s.")
  print()
  print("| impl | precision | tokens/s (median) | min-max | MFU | CPU cores used | "
        "tokens/CPU-s | ours/HF (tokens/s) |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  for r in runners:
    tps, util, per_cpu = med[id(r)]
    all_tps = [t for t, _ in results[id(r)]]
    peak = metrics_lib.peak_flops(harness.PRECISIONS[r.precision])
    mfu = tps * flops_per_token / peak if peak else float("nan")
    hf_tps = hf_by_prec.get(r.precision)
    ratio = (f"{tps / hf_tps:.2f}x" if hf_tps and not isinstance(r, HFRunner) else
             "1.00x" if isinstance(r, HFRunner) else "-")
    label = "HF GPT2LMHeadModel (torch)" if isinstance(r, HFRunner) else r.name
    print(f"| {label} | {r.precision} | {tps:,.0f} | {min(all_tps):,.0f}-{max(all_tps):,.0f} | "
          f"{mfu:.1%} | {util:.2f} | {per_cpu:,.0f} | {ratio} |")


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()
  main()
