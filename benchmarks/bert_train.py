"""BERT-MLM training throughput: our trainer (JAX/Flax NNX) vs Hugging Face BertForMaskedLM
(PyTorch).

Both train the same post-LN BERT (configs/bert.py preset `bench`: vocab 8192, 6 layers, d_model
512, 8 heads, d_ff 2048, 512 positions, exact GELU, LayerNorm eps 1e-12, tied MLM decoder,
dropout 0) with AdamW (lr 3e-4, betas 0.9/0.999, eps 1e-6, wd 0.01 on matrices only,
global-norm clip 1.0) on the same synthetic rows (random tokens, [CLS] A [SEP] B [SEP], 15 % of
tokens masked 80/10/10), seq 256, batch 8, in one process on the real devices.

Configurations, interleaved trial by trial (the order rotates every trial):

  ours        MLM head on the gathered masked positions only (max_predictions 40, as BERT)
  ours-all    MLM head on all 256 positions, like HF (the same work as the HF row)
  HF          BertForMaskedLM; its loss ignores unmasked positions (labels -100)

each in fp32 and bf16 (ours: `model.dtype=bfloat16` = fp32 params, bf16 matmul inputs, fp32
accumulation; HF: torch.autocast(device_type='cpu', dtype=torch.bfloat16)).

Reported: median tokens/s (input tokens) over trials, MFU = tokens/s x flops_per_token / peak with
ONE flops_per_token for every row (BertPretrainModel.flops_per_token() of `ours`: 6N + 12 L d T
with the MLM head counted at the masked positions only; the rows that compute the head at every
position do more work for the same useful FLOPs), and process CPU utilisation.

  PYTHONPATH=. python benchmarks/bert_train.py                  # ~6 minutes on 2 cores
  PYTHONPATH=. python benchmarks/bert_train.py --steps 2 --trials 2 --only ours
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


from bert_flax.masking import MaskingConfig, mask_batch  # noqa: E402
from bert_flax.model import BertPretrainModel  # noqa: E402
from common import metrics as metrics_lib  # noqa: E402
from common import allocator, steps, train_state  # noqa: E402
from common.partitioning import Partitioner  # noqa: E402
from configs.bert import get_config  # noqa: E402

PAD, CLS, SEP, MASK = 0, 4, 5, 6


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=4, help="timed steps per trial")
  p.add_argument("--trials", type=int, default=3, help="trials per configuration (median)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps before the first trial")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: all cores)")
  p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
  p.add_argument("--only", choices=("ours", "hf"), default=None, help="run one side only")
  p.add_argument("--no_allpos", action="store_true", help="skip the ours-all rows")
  p.add_argument("--hf_attn", default="sdpa", help="HF attn_implementation (sdpa or eager)")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  a.precisions = harness.parse_precisions(p, a.precisions)
  if min(a.steps, a.trials, a.batch, a.seq) < 1 or a.warmup < 0:
    p.error("--steps, --trials, --batch, --seq must be >= 1; --warmup >= 0")
  return a


def bench_config(batch: int, seq: int, dtype: str, all_positions: bool = False):
  cfg = get_config("bench")
  cfg.data.seq_len = seq
  cfg.model.dtype = dtype
  cfg.train.batch_size = batch
  cfg.optimizer.update(learning_rate=3e-4, warmup_steps=0, schedule="constant")
  cfg.pretrain.max_predictions = seq if all_positions else -(-seq * 5 // 32)  # 15.6 %, as BERT
  return cfg


def make_batches(n: int, cfg, seed: int) -> list[dict[str, np.ndarray]]:
  """Masked rows `[CLS] A [SEP] B [SEP]` of random tokens (no padding)."""
  rng = np.random.default_rng(seed)
  b, length, vocab = cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size
  masking = MaskingConfig(mask_id=MASK, special_ids=np.arange(7, dtype=np.int32),
                          replacement_ids=np.arange(7, vocab, dtype=np.int32),
                          max_predictions=-(-length * 5 // 32))
  out = []
  for _ in range(n):
    tokens = rng.integers(7, vocab, (b, length)).astype(np.int32)
    tokens[:, 0], tokens[:, length // 2], tokens[:, -1] = CLS, SEP, SEP
    batch = mask_batch(tokens, rng, masking)
    batch.update(type_ids=(np.arange(length) > length // 2)[None].repeat(b, 0).astype(np.int32),
                 positions=np.arange(length, dtype=np.int32)[None].repeat(b, 0),
                 segment_ids=np.ones((b, length), np.int32), original=tokens)
    out.append(batch)
  return out


def all_positions(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The same predictions laid out over every position (weight 0 where not selected)."""
  b, length = batch["tokens"].shape
  targets = batch["original"].copy()
  weights = np.zeros((b, length), np.float32)
  for r in range(b):
    w = batch["mlm_weights"][r] > 0
    weights[r, batch["mlm_positions"][r][w]] = 1.0
  return batch | {"mlm_positions": np.arange(length, dtype=np.int32)[None].repeat(b, 0),
                  "mlm_targets": targets, "mlm_weights": weights}


class OursRunner:

  def __init__(self, name: str, precision: str, cfg, batches: list[dict[str, np.ndarray]]):
    self.name, self.precision = name, precision
    self.partitioner = Partitioner(1, 1, 1)
    setup = train_state.make_setup(BertPretrainModel(cfg), cfg, self.partitioner)
    self.state = train_state.init_state(setup)
    self.train_step = steps.make_train_step(setup)
    allpos = cfg.pretrain.max_predictions == cfg.data.seq_len
    self.batches = [self.partitioner.global_batch(
        {k: v for k, v in (all_positions(b) if allpos else b).items() if k != "original"})
        for b in batches]
    self.i, self.metrics = 0, None

  def step(self) -> None:
    self.state, self.metrics = self.train_step(self.state, self.batches[self.i % len(self.batches)])
    self.i += 1

  def sync(self) -> float:
    jax.block_until_ready((self.state, self.metrics))
    return float(self.metrics["loss"])

  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.state["params"]))


class HFRunner:

  def __init__(self, precision: str, cfg, batches: list[dict[str, np.ndarray]], attn: str,
               seed: int):
    import torch
    from transformers import BertConfig, BertForMaskedLM
    self.torch = torch
    self.name, self.precision = "HF", precision
    m = cfg.model
    hf_cfg = BertConfig(vocab_size=m.vocab_size, hidden_size=m.d_model,
                        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                        intermediate_size=m.d_ff, hidden_act="gelu",
                        max_position_embeddings=m.max_len, type_vocab_size=m.type_vocab_size,
                        layer_norm_eps=m.norm_eps, hidden_dropout_prob=m.dropout_rate,
                        attention_probs_dropout_prob=m.attention_dropout_rate,
                        tie_word_embeddings=True)
    torch.manual_seed(seed)
    self.model = BertForMaskedLM._from_config(hf_cfg, attn_implementation=attn)
    self.model.train()
    self.attn = self.model.config._attn_implementation
    o = cfg.optimizer
    decay = [p for p in self.model.parameters() if p.ndim >= 2]
    no_decay = [p for p in self.model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
    try:
      self.opt = torch.optim.AdamW(groups, fused=True, **kw)
      self.optimizer_kind = "AdamW(fused)"
    except (RuntimeError, ValueError):
      self.opt = torch.optim.AdamW(groups, **kw)
      self.optimizer_kind = "AdamW"
    self.clip = o.clip_norm
    self.batches = []
    for b in batches:
      labels = np.full(b["tokens"].shape, -100, np.int64)
      for r in range(labels.shape[0]):
        w = b["mlm_weights"][r] > 0
        labels[r, b["mlm_positions"][r][w]] = b["mlm_targets"][r][w]
      self.batches.append({"input_ids": torch.from_numpy(b["tokens"].astype(np.int64)),
                           "token_type_ids": torch.from_numpy(b["type_ids"].astype(np.int64)),
                           "labels": torch.from_numpy(labels)})
    self.i, self.loss = 0, None

  def step(self) -> None:
    torch = self.torch
    batch = self.batches[self.i % len(self.batches)]
    self.opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16,
                        enabled=self.precision == "bf16"):
      loss = self.model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    self.loss = loss
    self.i += 1

  def sync(self) -> float:
    return float(self.loss.detach())

  def num_params(self) -> int:
    return sum(p.numel() for p in self.model.parameters())


def main(argv=None) -> None:
  args = parse_args(argv)
  import torch
  cores = harness.cores()
  torch.set_num_threads(args.threads or cores)
  base = bench_config(args.batch, args.seq, "float32")
  batches = make_batches(4, base, args.seed)
  tokens_per_step = args.batch * args.seq
  flops_per_token = BertPretrainModel(base).flops_per_token()
  runners = []
  for prec in args.precisions:
    dtype = harness.PRECISIONS[prec]
    if args.only != "hf":
      runners.append(OursRunner("ours", prec, bench_config(args.batch, args.seq, dtype), batches))
      if not args.no_allpos:
        runners.append(OursRunner("ours-all", prec,
                                  bench_config(args.batch, args.seq, dtype, True), batches))
    if args.only != "ours":
      runners.append(HFRunner(prec, base, batches, args.hf_attn, args.seed))

  print(f"# BERT-MLM training benchmark: {platform.processor() or platform.machine()}, "
        f"{cores} cores, load average {os.getloadavg()[0]:.2f} at start")
  print(f"# {allocator.describe()} (both frameworks; common/allocator.py)")
  print(f"# jax {jax.__version__} devices={jax.devices()}; torch {torch.__version__} "
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
        f"({tokens_per_step} tokens/step, {base.pretrain.max_predictions} predictions/row); "
        "params: " + ", ".join(f"{r.name} {r.num_params():,}" for r in runners[:1] + hf[:1]))
  print(f"# flops/token {flops_per_token / 1e6:.1f} MFLOP; peak "
        + ", ".join(f"{p} {metrics_lib.peak_flops(harness.PRECISIONS[p]) / 1e9:.0f} GFLOP/s"
                    for p in args.precisions) + " (common.metrics.peak_flops)")
  print(f"# {args.trials} trials x {args.steps} steps after {args.warmup} warm-up steps",
        flush=True)
  for r in runners:
    t0 = time.perf_counter()
    for _ in range(max(args.warmup, 1)):
      r.step()
    print(f"# warm-up {r.name} {r.precision}: {time.perf_counter() - t0:.1f}s "
          f"(loss {r.sync():.3f})", flush=True)

  results = {id(r): [] for r in runners}
  for trial in range(args.trials):
    order = runners[trial % len(runners):] + runners[:trial % len(runners)]
    line = []
    for r in order:
      tps, util, loss, _ = harness.time_trial(r, args.steps, tokens_per_step)
      if not np.isfinite(loss):
        raise SystemExit(f"error: {r.name} {r.precision} loss is {loss}")
      results[id(r)].append((tps, util))
      line.append(f"{r.name} {r.precision} {tps:,.0f} tok/s ({util:.2f} cores)")
    print(f"# trial {trial + 1}: " + "; ".join(line), flush=True)

  hf_tps = {r.precision: statistics.median(t for t, _ in results[id(r)])
            for r in runners if isinstance(r, HFRunner)}
  print()
  print("| impl | precision | tokens/s (median) | min-max | MFU | CPU cores used | vs HF |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for r in runners:
    tps = statistics.median(t for t, _ in results[id(r)])
    util = statistics.median(u for _, u in results[id(r)])
    all_tps = [t for t, _ in results[id(r)]]
    peak = metrics_lib.peak_flops(harness.PRECISIONS[r.precision])
    ref = hf_tps.get(r.precision)
    label = "HF BertForMaskedLM (torch)" if isinstance(r, HFRunner) else r.name
    ratio = f"{tps / ref:.2f}x" if ref else "-"
    print(f"| {label} | {r.precision} | {tps:,.0f} | {min(all_tps):,.0f}-{max(all_tps):,.0f} | "
          f"{tps * flops_per_token / peak:.1%} | {util:.2f} | {ratio} |")


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()
  main()
