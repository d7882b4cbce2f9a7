"""Text generation from a GPT checkpoint with the shared KV-cache decoder (`common/decoding.py`).

  python -m gpt_flax.generate --workdir=DIR --prompt="A command-line tool" [--prompt=...]
  python -m gpt_flax.generate --checkpoint=DIR/checkpoints/1500 --prompts_file=prompts.txt \
      --temperature=0.8 --top_p=0.95 --seed=1 --output=samples.jsonl

The prompt is prefilled in one pass, then one token per step is decoded inside a jitted
`while_loop` until EOS or `--max_new_tokens`. Ragged prompts share a batch (left-padded). The
model runs on the mesh of its saved config with the training sharding rules (or `--mesh`).

Sampling (`common.decoding.sampling_logits`, as in T5 inference) draws the token at position p
of prompt i with the key fold_in(fold_in(key(seed), i), p), by the Gumbel-max trick: a
continuation depends only on (seed, prompt index, prompt), never on batch size, padding, the
other prompts or the mesh.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from common import cli, decoding
from common.partitioning import Partitioner
from common.rundir import LoadedRun, RunDir
from common.vocab import Vocabulary
from gpt_flax.model import GPTModel
from gpt_flax.network import Decoder

PROMPT_BUCKET = 32  # padded prompt lengths are multiples of this: few compiled shapes
# The KV cache grows in up to this many phases (`decoding.generate`): a step reads the cache up
# to its phase's end, not the whole buffer (GPT bench, 128 new tokens: ~0.5-1 ms less per step).
DECODE_PHASES = 4


def inference_params(params: Any, dtype: str) -> Any:
  """Matrices and biases cast once to the compute dtype (each use casts them to it anyway, so
  results are unchanged) and a bf16 model reads half the bytes per decoded token. LayerNorm
  parameters stay fp32: their math is fp32."""
  if jnp.dtype(dtype) == jnp.float32:
    return params

  def cast(path, p):
    is_norm = any(str(getattr(k, "key", k)).endswith("norm") for k in path)
    return p if is_norm or not jnp.issubdtype(p.dtype, jnp.floating) else p.astype(dtype)
  return jax.tree_util.tree_map_with_path(cast, params)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_id", "temperature",
                                             "top_k", "top_p", "vocab_size", "phases"))
def _generate_jit(graphdef, params, prompt_BxP, mask_BxP, seed, row_ids_B, *,
                  max_new_tokens: int, eos_id: int, temperature: float, top_k: int, top_p: float,
                  vocab_size: int | None, phases: int):
  dtype = nnx.merge(graphdef, params).cfg.dtype
  decoder = Decoder(nnx.merge(graphdef, inference_params(params, dtype)))
  ends = decoding.phase_ends(max_new_tokens, phases)
  cache = decoder.init_cache(prompt_BxP.shape[0], prompt_BxP.shape[1] + ends[0])
  return decoding.generate(decoder, cache, prompt_BxP, mask_BxP, max_new_tokens=max_new_tokens,
                           key=jax.random.key(seed), eos_id=eos_id, temperature=temperature,
                           top_k=top_k, top_p=top_p, vocab_size=vocab_size, row_ids_B=row_ids_B,
                           phase_ends=ends)


def check_sampling(*, max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
  if top_k < 0:
    raise ValueError(f"top_k={top_k} must be >= 0 (0 = off)")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p} must be in (0, 1] (1 = off)")


def generate_tokens(graphdef, params, prompts: list[list[int]], *, max_len: int,
                    max_new_tokens: int, eos_id: int, seed: int = 0, temperature: float = 0.0,
                    top_k: int = 0, top_p: float = 1.0, vocab_size: int | None = None,
                    batch_size: int | None = None, partitioner: Partitioner | None = None,
                    phases: int = DECODE_PHASES) -> list[list[int]]:
  """Continuations (without the EOS) of ragged token prompts, decoded `batch_size` at a time.

  With `partitioner`, prompts are sharded over its data axes (each batch padded to a multiple
  of them) and activations follow its rules, as in training.
  """
  check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                 top_p=top_p)
  if not prompts:
    return []
  longest = max(len(p) for p in prompts)
  if longest + max_new_tokens > max_len:
    raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                     f"context window of {max_len}")
  n_data = partitioner.num_data if partitioner is not None else 1
  rows = math.ceil(min(batch_size or len(prompts), len(prompts)) / n_data) * n_data
  length = min(math.ceil(longest / PROMPT_BUCKET) * PROMPT_BUCKET, max_len - max_new_tokens)
  place = ((lambda x: jax.device_put(x, partitioner.batch_sharding(x.ndim)))
           if partitioner is not None else jnp.asarray)

  def decode_batch(chunk: list[list[int]], start: int) -> tuple[jax.Array, jax.Array]:
    tokens, mask = decoding.left_pad(chunk, length=length)
    row_ids = np.arange(start, start + rows, dtype=np.int32)
    return _generate_jit(
        graphdef, params, place(tokens), place(mask), jnp.asarray(seed, jnp.int32),
        place(row_ids), max_new_tokens=max_new_tokens, eos_id=eos_id, temperature=temperature,
        top_k=top_k, top_p=top_p, vocab_size=vocab_size, phases=phases)

  with partitioner.context() if partitioner is not None else contextlib.nullcontext():
    return decoding.predict_batches(prompts, rows, decode_batch, eos_id=eos_id)


def continuation_text(vocab: Vocabulary, prompt_ids: list[int], ids: list[int]) -> str:
  """Decoded continuation that keeps its leading space (SentencePiece drops it alone)."""
  head = vocab.decode(prompt_ids)
  full = vocab.decode(list(prompt_ids) + list(ids))
  return full[len(head):] if full.startswith(head) else vocab.decode(ids)


def encode_prompt(vocab: Vocabulary, text: str) -> list[int]:
  """Prompt ids as training saw a document start: BOS, then the text."""
  return [vocab.bos_id] + vocab.encode(text)


def generate_text(graphdef, params, vocab: Vocabulary, prompts: list[str], *, max_len: int,
                  max_new_tokens: int, **kwargs) -> list[str]:
  encoded = [encode_prompt(vocab, p) for p in prompts]
  outs = generate_tokens(graphdef, params, encoded, max_len=max_len,
                         max_new_tokens=max_new_tokens, eos_id=vocab.eos_id,
                         vocab_size=vocab.vocab_size, **kwargs)
  return [continuation_text(vocab, e, o) for e, o in zip(encoded, outs)]


def load(path: str, *, tokenizer: str | None = None, mesh: tuple[int, int, int] | None = None,
         dtype: str | None = None) -> LoadedRun:
  """A GPT work dir (or a checkpoint inside one) onto its training mesh, or `mesh` (data,
  fsdp, tensor); `dtype` overrides the compute dtype (e.g. bfloat16)."""
  def make_model(cfg, identity):
    if identity.get("family") not in (None, GPTModel.name):
      raise ValueError(f"{path} holds a {identity.get('family')!r} checkpoint, not a GPT one")
    return GPTModel(cfg)
  return RunDir.find(path).load(make_model, checkpoint=path, mesh=mesh, dtype=dtype,
                                tokenizer=tokenizer)


def complete(run: LoadedRun, prompts: list[str], **kwargs) -> list[str]:
  """Continuations of text prompts by a loaded GPT, on its partitioner."""
  return generate_text(run.setup.graphdef, run.params, run.vocab, prompts,
                       max_len=run.cfg.model.max_len, partitioner=run.setup.partitioner, **kwargs)


# --------------------------------------------------------------------------- command line


def define_model_flags() -> None:
  """Flags shared with gpt_flax.icl (defined on demand: importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "A GPT work dir (its latest checkpoint).")
  flags.DEFINE_string("checkpoint", None, "A GPT work dir, its checkpoints/ or one step dir.")
  flags.DEFINE_string("tokenizer", None, "Tokenizer to use instead of the run's vocab/.")
  flags.DEFINE_string("mesh", None, "data,fsdp,tensor sizes (default: the run's config).")
  flags.DEFINE_string("dtype", None, "Compute dtype override (float32 or bfloat16).")
  flags.DEFINE_integer("batch_size", 8, "Prompts decoded together.")


def model_from_flags() -> LoadedRun:
  f = flags.FLAGS
  if bool(f.checkpoint) == bool(f.workdir):
    raise ValueError("pass exactly one of --workdir=DIR or --checkpoint=PATH")
  mesh = None
  if f.mesh:
    try:
      mesh = tuple(int(x) for x in f.mesh.split(","))
    except ValueError:
      mesh = ()
    if len(mesh) != 3:
      raise ValueError(f"--mesh={f.mesh!r}: expected data,fsdp,tensor sizes, e.g. 1,1,1")
  if f.dtype not in (None, "float32", "bfloat16"):
    raise ValueError(f"--dtype={f.dtype!r}; valid: float32, bfloat16")
  return load(f.checkpoint or f.workdir, tokenizer=f.tokenizer, mesh=mesh, dtype=f.dtype)


def define_flags() -> None:
  define_model_flags()
  flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
  flags.DEFINE_string("prompts_file", None, "Prompts: one per line, or JSONL with --prompt_field.")
  flags.DEFINE_string("prompt_field", "prompt", "Field of a .jsonl prompts file.")
  flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most (EOS ends earlier).")
  flags.DEFINE_float("temperature", 0.0, "0 = greedy; else sample at this temperature.")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = off).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus: the smallest set reaching probability p (1 = off).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("output", None, "Write JSONL here instead of text to stdout.")


def read_prompts(prompts: list[str], path: str | None, field: str) -> list[str]:
  if bool(prompts) == bool(path):
    raise ValueError("pass --prompt=TEXT (repeatable) or --prompts_file=PATH (one of them)")
  if not path:
    return list(prompts)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--prompts_file {path} not found")
  with open(path, encoding="utf-8", errors="strict") as f:
    lines = [l.rstrip("\r\n") for l in f if l.strip()]
  if not path.endswith(".jsonl"):
    return lines
  out = []
  for i, line in enumerate(lines, 1):
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict) or field not in row:
      raise ValueError(f"{path}:{i}: expected a JSON object with field {field!r}")
    out.append(str(row[field]))
  return out


def main() -> None:
  f = flags.FLAGS
  prompts = read_prompts(f.prompt, f.prompts_file, f.prompt_field)
  check_sampling(max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_k=f.top_k,
                 top_p=f.top_p)
  run = model_from_flags()
  texts = complete(run, prompts, max_new_tokens=f.max_new_tokens, seed=f.seed,
                   temperature=f.temperature, top_k=f.top_k, top_p=f.top_p,
                   batch_size=f.batch_size)
  rows = [{"prompt": p, "completion": t, "checkpoint_step": run.step, "seed": f.seed,
           "temperature": f.temperature, "top_k": f.top_k, "top_p": f.top_p}
          for p, t in zip(prompts, texts)]
  if f.output:
    with open(f.output, "w") as out:
      out.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"wrote {len(rows)} completions to {f.output}", file=sys.stderr)
  else:
    for r in rows:
      print(f"{r['prompt']}{r['completion']}\n", flush=True)


def cli_main() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  cli_main()
