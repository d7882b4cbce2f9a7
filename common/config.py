"""Config files (ml_collections) shared by all model families: defaults, validation, overrides.

Each family's `configs/<family>.py:<preset>` starts from `base_config()`; any field can be
overridden with `--config.a.b=value`. Overrides are checked before absl parses them so an
unknown key is one clear line that names the valid keys, not a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Sequence

from ml_collections import ConfigDict

from common.data.sources import parse_split

DEFAULT_DATA_DIR = os.environ.get("FLAX_PRETRAIN_DATA", os.path.expanduser("~/.cache/flax_pretrain"))
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def base_config() -> ConfigDict:
  """Trainer, data, optimizer and mesh defaults common to BERT, T5 and GPT."""
  c = ConfigDict()
  c.seed = 0
  c.model = ConfigDict()
  c.data = ConfigDict(dict(
      dataset="debian", data_dir=DEFAULT_DATA_DIR, tokenizer="", text_field="text",
      train_split="train", eval_split="validation", seq_len=128, shuffle=True,
      # Resume the weights of a checkpoint but start the data from its beginning (another
      # dataset, batch size or seed than the checkpoint's, which cannot continue exactly).
      restart=False,
      # File datasets (jsonl:, text:): drop lines that are not UTF-8 / not a JSON object
      # (counted in metrics.jsonl as data/skipped_records) instead of stopping with file:line.
      skip_bad_records=False,
      # Worker processes that build the training rows (0: the training process itself);
      # each builds a block of the batch's rows, the batches stay identical (data/workers.py).
      num_workers=0))
  c.train = ConfigDict(dict(
      batch_size=8, num_steps=1000, grad_accum_steps=1, log_every=10, eval_every=500,
      eval_batches=8, checkpoint_every=500, keep_checkpoints=3, async_checkpoint=True,
      peak_flops_per_device=0.0,
      # Stop (before the next checkpoint) when a step's loss exceeds this many times the
      # median of the last 100 steps; 0 = off. Non-finite losses always stop.
      spike_factor=3.0,
      # Allow a keep_checkpoints smaller than the number of checkpoints already in the work
      # dir (the oldest are then deleted at the next save).
      prune_checkpoints=False))
  c.optimizer = ConfigDict(dict(
      name="adamw", learning_rate=3e-4, warmup_steps=100, schedule="cosine", end_lr_ratio=0.1,
      weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0, adafactor_decay_rate=0.8,
      adafactor_param_scale=True, adafactor_min_dim_to_factor=128))
  c.loss = ConfigDict(dict(z_loss=0.0, label_smoothing=0.0))
  # Starting from another run's parameters, and the schedule fine-tuning tasks train with.
  # `init_from`: a work dir (or a checkpoint inside one) whose parameters, and tokenizer,
  # this run starts from; steps count from 0. When `task` is not "pretrain" the optimizer's
  # learning_rate / schedule / warmup come from here (warmup as a fraction of num_steps), and
  # so does the model's dropout_rate where a family's config adds `finetune.dropout_rate`
  # (T5.1.1 pretrains without dropout and fine-tunes with 0.1).
  c.finetune = ConfigDict(dict(init_from="", learning_rate=1e-4, schedule="linear",
                               warmup_ratio=0.1))
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1, rules="fsdp_tp",
                           allow_partial_sharding=False))
  return c


# What a fine-tuning task takes from `finetune` instead: {overridden key: its finetune key}.
FINETUNE_KEYS = {"optimizer.learning_rate": "finetune.learning_rate",
                 "optimizer.schedule": "finetune.schedule",
                 "optimizer.warmup_steps": "finetune.warmup_ratio",
                 "model.dropout_rate": "finetune.dropout_rate"}


def is_finetuning_task(cfg: ConfigDict) -> bool:
  return cfg.get("task", "pretrain") != "pretrain"


def resolve_finetune(cfg: ConfigDict) -> ConfigDict:
  """A copy of `cfg` whose optimizer schedule (and dropout, where `finetune` has one) is
  `finetune`'s when the task fine-tunes (what config.json then records); pretraining configs
  come back unchanged."""
  cfg = ConfigDict(cfg.to_dict())
  if is_finetuning_task(cfg):
    f = cfg.finetune
    if not 0 <= f.warmup_ratio < 1:
      raise ValueError(f"finetune.warmup_ratio={f.warmup_ratio} must be in [0, 1)")
    cfg.optimizer.update(learning_rate=f.learning_rate, schedule=f.schedule,
                         warmup_steps=int(round(f.warmup_ratio * cfg.train.num_steps)))
    if "dropout_rate" in f:
      cfg.model.dropout_rate = f.dropout_rate
  return cfg


def load_config_file(spec: str) -> ConfigDict:
  """`path/to/file.py[:preset]` -> the file's `get_config(preset)`."""
  path, _, preset = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location(f"_cfg_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def check_key(config: ConfigDict, dotted: str) -> None:
  """Raises a one-line error naming the valid keys if `dotted` is not a field of `config`."""
  node, walked = config, []
  for part in dotted.split("."):
    if not isinstance(node, ConfigDict) or part not in node:
      valid = sorted(node.keys()) if isinstance(node, ConfigDict) else []
      where = ".".join(walked) or "<top level>"
      raise ValueError(f"unknown config key {dotted!r}: {where} has no field {part!r}; "
                       f"valid keys there: {', '.join(valid)}")
    node = node[part]
    walked.append(part)


def check_overrides(argv: Sequence[str], default_spec: str, flag: str = "config") -> None:
  """Loads the selected config file[:preset] and checks every `--config.a.b=v` key in argv."""
  spec = default_spec
  overrides = []
  for arg in argv[1:]:
    if arg.startswith(f"--{flag}="):
      spec = arg.split("=", 1)[1]
    elif arg.startswith(f"--{flag}."):
      overrides.append(arg[len(flag) + 3:].split("=", 1)[0])
  config = load_config_file(spec)
  for key in overrides:
    check_key(config, key)
  task = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{flag}.task=")),
              config.get("task", "pretrain"))
  ignored = [k for k in overrides
             if k in FINETUNE_KEYS and _get(config, FINETUNE_KEYS[k]) is not None]
  if task != "pretrain" and ignored:
    raise ValueError(f"task={task} fine-tunes with the finetune section's settings, so "
                     f"--config.{ignored[0]} would be ignored; set "
                     f"--config.{FINETUNE_KEYS[ignored[0]]}")


def apply_overrides(config: ConfigDict, overrides: dict) -> ConfigDict:
  """Programmatic `--config.a.b=v` (tests, sweeps): same checks as the command line."""
  config = ConfigDict(config.to_dict())
  for dotted, value in overrides.items():
    check_key(config, dotted)
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def save_config(config: ConfigDict, workdir: str) -> str:
  """Writes the resolved config (after overrides) to workdir/config.json, atomically."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path


# (dotted key, test, what it must be): numeric fields every family shares.
_RANGES = (
    ("train.batch_size", lambda v: v >= 1, ">= 1"),
    ("train.num_steps", lambda v: v >= 1, ">= 1"),
    ("train.log_every", lambda v: v >= 1, ">= 1"),
    ("train.eval_every", lambda v: v >= 1, ">= 1"),
    ("train.eval_batches", lambda v: v >= 1, ">= 1"),
    ("train.checkpoint_every", lambda v: v >= 1, ">= 1"),
    ("train.keep_checkpoints", lambda v: v >= 1, ">= 1 (0 would delete every checkpoint)"),
    ("train.grad_accum_steps", lambda v: v >= 1, ">= 1"),
    ("train.spike_factor", lambda v: v == 0 or v > 1, "> 1, or 0 (off)"),
    ("train.peak_flops_per_device", lambda v: v >= 0, ">= 0"),
    ("optimizer.learning_rate", lambda v: v > 0, "> 0"),
    ("optimizer.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optimizer.end_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optimizer.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.eps", lambda v: v > 0, "> 0"),
    ("optimizer.clip_norm", lambda v: v >= 0, ">= 0 (0: off)"),
    ("finetune.learning_rate", lambda v: v > 0, "> 0"),
    ("finetune.warmup_ratio", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("finetune.dropout_rate", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data.seq_len", lambda v: v >= 1, ">= 1"),
    ("data.num_workers", lambda v: v >= 0, ">= 0 (0: rows built in the training process)"),
    ("loss.z_loss", lambda v: v >= 0, ">= 0"),
    ("loss.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
)
DTYPES = ("float32", "bfloat16")


def _get(cfg: ConfigDict, dotted: str):
  node = cfg
  for part in dotted.split("."):
    if not isinstance(node, ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def validate(cfg: ConfigDict) -> None:
  """Signs and ranges of the shared numeric fields and the model's dtype: one line naming the
  field, its value and what it must be, before any data is read or anything written."""
  for key, ok, what in _RANGES:
    value = _get(cfg, key)
    if value is not None and not ok(value):
      raise ValueError(f"{key}={value} must be {what}")
  model = cfg.get("model", ConfigDict())
  if model.get("dtype") not in (None, *DTYPES):
    raise ValueError(f"model.dtype={model.dtype!r}; valid: {', '.join(DTYPES)}")
  for key, value in model.items():
    if "dropout" in key and isinstance(value, float) and not 0 <= value < 1:
      raise ValueError(f"model.{key}={value} must be in [0, 1)")
  for name, section in cfg.items():
    for key, value in (section.items() if isinstance(section, ConfigDict) else ()):
      if key.endswith("_split") and value:
        try:
          parse_split(value)
        except ValueError as e:
          raise ValueError(f"{name}.{key}: {e}") from None
