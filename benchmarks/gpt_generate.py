"""GPT generation throughput with a KV cache: ours (JAX, gpt_flax.generate) vs Hugging Face
`GPT2LMHeadModel.generate` (PyTorch, use_cache=True).

Same network and the SAME random weights on both sides (ours initialised, then exported with
gpt_flax.hf): vocab 8192, 6 layers, d_model 512, 8 heads, d_ff 2048 (configs/gpt.py `bench`),
batch 8, prompts of 64 random tokens, greedy, exactly 128 new tokens on both (ours: an EOS id
that never occurs; HF: eos_token_id=None, so no stopping criterion fires). Timed: the whole
generate call (prefill + 128 decode steps + host transfer), after a warm-up call (compilation).

Configurations, interleaved trial by trial (order rotating) so machine noise hits them alike:
  ours fp32 / HF fp32           everything fp32 (the default)
  ours bf16 (--precisions=fp32,bf16)   model.dtype=bfloat16: weights cast to bf16 once per call,
                                bf16 matmul inputs, fp32 accumulation, bf16 KV cache
  HF bf16                       the model converted with .to(torch.bfloat16)

Reported: median new tokens/s (batch x 128 / seconds), ours/HF per precision, the process CPU
seconds per call (on a shared machine, wall time also counts waiting for the cores), and how
many greedy tokens the two fp32 sides agree on (same weights: both must decode the same model).

  PYTHONPATH=. python benchmarks/gpt_generate.py               # ~3 minutes on 2 idle cores
  PYTHONPATH=. python benchmarks/gpt_generate.py --trials 3 --precisions fp32
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


from common import allocator, param_layout, train_state  # noqa: E402
from common.partitioning import Partitioner  # noqa: E402
from configs.gpt import get_config  # noqa: E402
from gpt_flax import hf as gpt_hf  # noqa: E402
from gpt_flax.generate import generate_tokens  # noqa: E402
from gpt_flax.model import GPTModel  # noqa: E402

NEVER = -1  # an EOS id no token equals: every row decodes exactly max_new_tokens


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--trials", type=int, default=5, help="timed calls per configuration (median)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
  p.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16")
  p.add_argument("--only", choices=("ours", "hf"), default=None, help="run one side only")
  p.add_argument("--hf_attn", default="sdpa", help="HF attn_implementation (sdpa or eager)")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  a.precisions = harness.parse_precisions(p, a.precisions)
  if min(a.trials, a.batch, a.prompt_len, a.new_tokens) < 1:
    p.error("--trials, --batch, --prompt_len, --new_tokens must be >= 1")
  return a


def bench_config(max_len: int, dtype: str):
  cfg = get_config("bench")
  cfg.model.max_len = max_len
  cfg.model.dtype = dtype
  return cfg


class Ours:

  def __init__(self, precision: str, params, max_len: int, prompts: list[list[int]],
               new_tokens: int):
    self.name, self.precision = "ours", precision
    cfg = bench_config(max_len, harness.PRECISIONS[precision])
    self.setup = train_state.make_setup(GPTModel(cfg), cfg, Partitioner(1, 1, 1))
    self.params, self.max_len, self.prompts, self.new_tokens = params, max_len, prompts, new_tokens

  def run(self) -> np.ndarray:
    out = generate_tokens(self.setup.graphdef, self.params, self.prompts, max_len=self.max_len,
                          max_new_tokens=self.new_tokens, eos_id=NEVER)
    return np.array(out)


class HF:

  def __init__(self, precision: str, state: dict, cfg, prompts: list[list[int]],
               new_tokens: int, attn: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    self.torch, self.name, self.precision = torch, "HF", precision
    m = cfg.model
    hf_cfg = GPT2Config(vocab_size=m.vocab_size, n_positions=m.max_len, n_embd=m.d_model,
                        n_layer=m.num_layers, n_head=m.num_heads, n_inner=m.d_ff,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, layer_norm_epsilon=m.norm_eps, tie_word_embeddings=True,
                        bos_token_id=None, eos_token_id=None, pad_token_id=0)
    self.model = GPT2LMHeadModel._from_config(hf_cfg, attn_implementation=attn).eval()
    missing, unexpected = self.model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=False)
    if unexpected or any(not k.endswith("attn.bias") and k != "lm_head.weight" for k in missing):
      raise SystemExit(f"error: HF weights mismatch: missing {missing}, unexpected {unexpected}")
    self.model.tie_weights()
    if precision == "bf16":
      self.model = self.model.to(torch.bfloat16)
    self.attn = self.model.config._attn_implementation
    self.ids = torch.tensor(prompts, dtype=torch.long)
    self.new_tokens = new_tokens

  def run(self) -> np.ndarray:
    torch = self.torch
    with torch.inference_mode():
      out = self.model.generate(
          self.ids, attention_mask=torch.ones_like(self.ids), do_sample=False, use_cache=True,
          max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens, eos_token_id=None,
          pad_token_id=0)
    out = out[:, self.ids.shape[1]:].numpy()
    if out.shape[1] != self.new_tokens:
      raise SystemExit(f"error: HF generated {out.shape[1]} tokens, not {self.new_tokens}")
    return out


def main(argv=None) -> None:
  args = parse_args(argv)
  import torch
  cores = harness.cores()
  torch.set_num_threads(args.threads or cores)
  max_len = args.prompt_len + args.new_tokens
  base = bench_config(max_len, "float32")
  model = GPTModel(base)
  setup = train_state.make_setup(model, base, Partitioner(1, 1, 1))
  params = train_state.init_state(setup)["params"]
  rng = np.random.default_rng(args.seed)
  prompts = rng.integers(4, base.model.vocab_size, (args.batch, args.prompt_len)).tolist()

  runners = []
  for prec in args.precisions:
    if args.only != "hf":
      runners.append(Ours(prec, params, max_len, prompts, args.new_tokens))
    if args.only != "ours":
      net = setup.merge(params)
      canonical = param_layout.from_params(net, jax.device_get(params))
      state = gpt_hf.export_tensors(model, canonical)
      runners.append(HF(prec, state, base, prompts, args.new_tokens, args.hf_attn))

  m = base.model
  new = args.batch * args.new_tokens
  print(f"# GPT generation benchmark: {platform.processor() or platform.machine()}, {cores} "
        f"cores, load average {os.getloadavg()[0]:.2f} at start")
  print(f"# {allocator.describe()} (both frameworks; common/allocator.py)")
  print(f"# jax {jax.__version__} devices={jax.devices()}; torch {torch.__version__} "
        f"num_threads={torch.get_num_threads()}", end="")
  hf = [r for r in runners if isinstance(r, HF)]
  if hf:
    import transformers
    print(f"; transformers {transformers.__version__} attn={hf[0].attn}", end="")
  print(f"\n# model: vocab {m.vocab_size}, {m.num_layers} layers, d_model {m.d_model}, "
        f"{m.num_heads} heads, d_ff {m.d_ff}; batch {args.batch}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens (greedy, no EOS); {args.trials} trials", flush=True)

  outputs = {}
  for r in runners:
    t0 = time.perf_counter()
    outputs[(r.name, r.precision)] = r.run()
    print(f"# warm-up {r.name} {r.precision}: {time.perf_counter() - t0:.1f}s", flush=True)
  if ("ours", "fp32") in outputs and ("HF", "fp32") in outputs:
    a, b = outputs[("ours", "fp32")], outputs[("HF", "fp32")]
    first = [int(np.argmax(x != y)) if (x != y).any() else len(x) for x, y in zip(a, b)]
    print(f"# fp32 greedy agreement (same weights): {int((a == b).all(1).sum())}/{len(a)} rows "
          f"identical; tokens before the first difference per row: {first}")

  times = {id(r): [] for r in runners}
  cpu = {id(r): [] for r in runners}
  for trial in range(args.trials):
    order = runners[trial % len(runners):] + runners[:trial % len(runners)]
    line = []
    for r in order:
      c0, t0 = harness.cpu_seconds(), time.perf_counter()
      r.run()
      dt = time.perf_counter() - t0
      times[id(r)].append(dt)
      cpu[id(r)].append(harness.cpu_seconds() - c0)
      line.append(f"{r.name} {r.precision} {new / dt:,.0f} tok/s ({cpu[id(r)][-1]:.1f} CPU-s)")
    print(f"# trial {trial + 1}: " + "; ".join(line), flush=True)

  tps = {id(r): [new / t for t in times[id(r)]] for r in runners}
  hf_by_prec = {r.precision: statistics.median(tps[id(r)]) for r in runners if isinstance(r, HF)}
  print()
  print("| impl | precision | new tokens/s (median) | min-max | ms per token step | CPU-s per "
        "call | ours/HF |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for r in runners:
    med = statistics.median(tps[id(r)])
    ref = hf_by_prec.get(r.precision)
    ratio = "1.00x" if isinstance(r, HF) else (f"{med / ref:.2f}x" if ref else "-")
    label = "HF GPT2LMHeadModel.generate (torch)" if isinstance(r, HF) else "ours (gpt_flax)"
    print(f"| {label} | {r.precision} | {med:,.0f} | {min(tps[id(r)]):,.0f}-"
          f"{max(tps[id(r)]):,.0f} | {1000 * args.batch / med:.1f} | "
          f"{statistics.median(cpu[id(r)]):.1f} | {ratio} |")


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()
  main()
