"""Hugging Face <-> flax-pretrain weights: import a local HF model into a work dir, export a
work dir's checkpoint as an HF model.

  python -m common.convert --hf_dir=HF_MODEL_DIR --workdir=DIR [--preset=P] [--dtype=float32]
      [--scan_layers=false] [--vocab_multiple=128]
  python -m common.convert --workdir=DIR --export_to=HF_MODEL_DIR [--step=N]

Import writes a work dir that fine-tuning (`--config.finetune.init_from=DIR`) and inference
load like any other run: config.json (the family preset with the HF shapes; parameters fp32,
compute dtype `--dtype`, default float32 like the source), hf_config.json (the source config,
reused on export), vocab/ (the source tokenizer) and an Orbax checkpoint `checkpoints/0/`
holding `params` and `meta` (no optimizer state: it is not a run to resume). Export writes
config.json + model.safetensors (+ the tokenizer) back. Every tensor must be present, have the
shape config.json implies, and be used.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from flax import nnx
from ml_collections import ConfigDict

from common import cli
from common import config as config_lib
from common.checkpoint import Checkpointer
from common.checkpoint_reader import load_params, resolve_checkpoint
from bert_flax import hf as bert_hf
from common.hf_files import Family, Tensors, preset_config, read_hf_config, read_hf_weights
from common.param_layout import abstract_network, from_params, to_params, trim_vocab
from common.rundir import RunDir
from common.vocab import hf as hf_vocab
from gpt_flax import hf as gpt_hf
from t5x_lite import hf as t5_hf

HF_CONFIG_FILE = "hf_config.json"  # the source config.json, kept in the work dir for export


def families() -> list[Family]:
  return [gpt_hf.FAMILY, bert_hf.FAMILY, t5_hf.FAMILY]


def family_for(hf_cfg: dict, where: str) -> tuple[Family, str]:
  """(family, architecture) for an HF config; a clear error for anything unsupported."""
  supported = {a: f for f in families() for a in f.architectures}
  archs = hf_cfg.get("architectures") or []
  for arch in archs:
    if arch in supported:
      return supported[arch], arch
  for fam in families():
    if not archs and hf_cfg.get("model_type") == fam.model_type:
      return fam, fam.architectures[0]
  raise ValueError(f"{where} holds a {hf_cfg.get('model_type')!r} model with architectures "
                   f"{archs}; supported: {', '.join(sorted(supported))}")


def resolved_config(family: Family, hf_cfg: dict, tensors: Tensors, *, preset: str | None = None,
                    dtype: str = "float32", scan_layers: bool | None = None,
                    vocab_multiple: int = 1) -> ConfigDict:
  """The family preset with the HF model's shapes (vocab optionally padded to a multiple),
  computing in `dtype` (presets for accelerators compute in bf16; an imported model keeps
  the source's fp32 unless asked)."""
  if vocab_multiple < 1:
    raise ValueError(f"vocab_multiple must be >= 1, got {vocab_multiple}")
  overrides = dict(family.config_overrides(hf_cfg, tensors))
  overrides["model.dtype"] = dtype
  v = overrides["model.vocab_size"]
  overrides["model.vocab_size"] = -(-v // vocab_multiple) * vocab_multiple
  if scan_layers is not None:
    overrides["model.scan_layers"] = bool(scan_layers)
  return config_lib.apply_overrides(preset_config(family, preset), overrides)


def import_hf(hf_dir: str, workdir: str, *, preset: str | None = None, dtype: str = "float32",
              scan_layers: bool | None = None, vocab_multiple: int = 1) -> ConfigDict:
  """Converts a local HF model directory into a work dir (see module doc); returns the config."""
  hf_dir = os.path.abspath(os.path.expanduser(hf_dir))
  workdir = os.path.abspath(os.path.expanduser(workdir))
  hf_cfg = read_hf_config(hf_dir)
  family, arch = family_for(hf_cfg, hf_dir)
  if os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(
      os.path.join(workdir, "checkpoints")):
    raise ValueError(f"work dir {workdir} already holds checkpoints; use a new --workdir")
  arrays = read_hf_weights(hf_dir)
  p = family.base_prefix
  if p and not any(k.startswith(p) for k in arrays):
    arrays = {p + k: v for k, v in arrays.items()}
  tensors = Tensors(arrays, where=hf_dir)
  cfg = resolved_config(family, hf_cfg, tensors, preset=preset, dtype=dtype,
                        scan_layers=scan_layers, vocab_multiple=vocab_multiple)
  model = family.make_model(cfg, arch, None)
  canonical = family.import_tensors(hf_cfg, model, tensors)
  unused = tensors.unused(family.ignored)
  if unused:
    raise ValueError(f"{hf_dir} holds tensors a {arch} with this config.json does not have: "
                     f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}")
  params = to_params(abstract_network(model), canonical)
  vocab_path = hf_vocab.import_tokenizer(hf_dir, os.path.join(workdir, "vocab"), hf_cfg)
  if vocab_path:
    cfg.data.tokenizer = vocab_path
  config_lib.save_config(cfg, workdir)
  with open(os.path.join(workdir, HF_CONFIG_FILE), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, async_save=False)
  ckpt.manager.save(0, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      meta=ocp.args.JsonSave({"identity": model.identity(), "step": 0,
                              "converted_from": {"hf_dir": hf_dir, "architecture": arch}})),
      force=True)
  ckpt.close()
  return cfg


def load_workdir(workdir: str, step: int | None = None
                 ) -> tuple[Family, str, ConfigDict, Any, dict, int]:
  """(family, HF architecture, config, model, params (pure dict, one device), step)."""
  run_dir = RunDir(workdir)
  cfg = run_dir.config()
  root, step = resolve_checkpoint(run_dir.checkpoints_dir if step is None else
                                  os.path.join(run_dir.checkpoints_dir, str(step)))
  identity = run_dir.identity(os.path.join(root, str(step)))
  found = [(f, f.architecture_of(identity)) for f in families()]
  found = [(f, a) for f, a in found if a]
  if not found:
    raise ValueError(f"{workdir} holds a {identity.get('family')!r} model; exportable: "
                     f"{', '.join(a for f in families() for a in f.architectures)}")
  family, arch = found[0]
  model = family.make_model(cfg, arch, identity)
  abstract = nnx.to_pure_dict(nnx.state(abstract_network(model), nnx.Param))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params, step, _, _ = load_params(os.path.join(root, str(step)), abstract,
                                   jax.tree.map(lambda _: device, abstract))
  return family, arch, cfg, model, params, step


def load_network(workdir: str, step: int | None = None) -> tuple[ConfigDict, Any, nnx.Module]:
  """(config, model, network with the checkpoint's params) of a work dir, on one device."""
  _, _, cfg, model, params, _ = load_workdir(workdir, step)
  graphdef, state = nnx.split(abstract_network(model))
  nnx.replace_by_pure_dict(state, params)
  return cfg, model, nnx.merge(graphdef, state)


def export_hf(workdir: str, out_dir: str, *, step: int | None = None) -> str:
  """Writes config.json + model.safetensors (+ tokenizer files) for a work dir's checkpoint."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(workdir))
  family, _, cfg, model, params, _ = load_workdir(workdir, step)
  hf_source = {}
  if os.path.isfile(os.path.join(workdir, HF_CONFIG_FILE)):
    with open(os.path.join(workdir, HF_CONFIG_FILE)) as f:
      hf_source = json.load(f)
  canonical = from_params(abstract_network(model), params)
  vocab_size = hf_source.get("vocab_size")
  if vocab_size is not None and vocab_size < cfg.model.vocab_size:  # undo import-time padding
    canonical = trim_vocab(model, canonical, vocab_size)
  run_dir = RunDir(workdir)
  vocab = run_dir.vocab() if os.path.isdir(run_dir.vocab_dir) else None
  tensors = family.export_tensors(model, canonical)
  hf_cfg = family.hf_config(model, hf_source, canonical, vocab)
  os.makedirs(out_dir, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  if vocab is not None:
    hf_vocab.export_tokenizer(vocab, out_dir, family.sp_tokenizer_class)
  return out_dir


# --------------------------------------------------------------------------- command line

def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The work dir to write (import) or read (export).")
  flags.DEFINE_string("hf_dir", None, "Import: a local Hugging Face model directory "
                      "(config.json + weights [+ tokenizer]).")
  flags.DEFINE_string("export_to", None, "Export: the Hugging Face directory to write from "
                      "--workdir.")
  flags.DEFINE_string("preset", None, "Import: the configs/<family>.py preset the HF shapes "
                      "override (default: the family's).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Import: the compute dtype "
                    "(parameters stay fp32, as the source's).")
  flags.DEFINE_bool("scan_layers", None, "Import: stacked (scanned) layer parameters "
                    "(default: the preset's).")
  flags.DEFINE_integer("vocab_multiple", 1, "Import: zero-pad the vocab to a multiple (e.g. "
                       "128, as our presets do); export trims it back.")
  flags.DEFINE_integer("step", None, "Export: checkpoint step (default: latest).")


def main() -> None:
  f = flags.FLAGS
  if not f.workdir:
    raise ValueError("--workdir is required")
  workdir = os.path.abspath(os.path.expanduser(f.workdir))
  if bool(f.hf_dir) == bool(f.export_to):
    raise ValueError("give exactly one of --hf_dir (import) or --export_to (export)")
  if f.hf_dir:
    cfg = import_hf(f.hf_dir, workdir, preset=f.preset, dtype=f.dtype,
                    scan_layers=f.scan_layers, vocab_multiple=f.vocab_multiple)
    family, _ = family_for(read_hf_config(f.hf_dir), f.hf_dir)
    preset = f.preset or family.default_preset
    base = preset_config(family, preset).model
    overrides = " ".join(f"--config.model.{k}={v}" for k, v in cfg.model.items()
                         if base.get(k) != v)
    print(f"imported {f.hf_dir} -> {workdir} (parameters float32, compute dtype "
          f"{cfg.model.dtype}); its model is configs/{family.name}.py:{preset} {overrides}; "
          f"fine-tune it with --config.finetune.init_from={workdir}")
  else:
    out = export_hf(workdir, f.export_to, step=f.step)
    print(f"exported {workdir} -> {out}")


def cli_main() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  cli_main()
