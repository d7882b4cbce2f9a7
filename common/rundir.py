"""A run directory, read and written in one place.

  WORKDIR/config.json     the resolved config the run trained with (after every override)
  WORKDIR/vocab/          the tokenizer it trained with, so a checkpoint always travels with it
  WORKDIR/checkpoints/N/  Orbax steps: params, opt_state, data position, meta (identity)
  WORKDIR/metrics.jsonl, tensorboard/, log.txt

Generation, inference, conversion, fine-tuning (`finetune.init_from`) and the trainer all go
through `RunDir`, so a work dir is located, validated and loaded the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
from ml_collections import ConfigDict

from common import config as config_lib
from common.checkpoint_reader import load_params, read_meta, resolve_checkpoint
from common.partitioning import Partitioner
from common.train_state import Model, Setup, make_setup
from common.vocab import Vocabulary, load_vocab


@dataclasses.dataclass
class LoadedRun:
  """A trained model ready for inference: its config, setup (partitioner), params, tokenizer."""
  cfg: ConfigDict
  setup: Setup
  params: Any
  vocab: Vocabulary
  step: int
  run_dir: "RunDir"


class RunDir:
  """One training run's directory (see the module docstring)."""

  def __init__(self, path: str):
    self.path = os.path.abspath(os.path.expanduser(path))

  @classmethod
  def find(cls, path: str) -> "RunDir":
    """The run dir at or above a path: DIR, DIR/checkpoints or DIR/checkpoints/STEP."""
    p = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(p):
      raise FileNotFoundError(f"{path} does not exist")
    for candidate in (p, os.path.dirname(p), os.path.dirname(os.path.dirname(p))):
      if os.path.isfile(os.path.join(candidate, "config.json")):
        return cls(candidate)
    raise FileNotFoundError(f"no config.json at or above {path}: pass a work dir written by a "
                            "training command (config.json, vocab/, checkpoints/) or a "
                            "checkpoint inside one")

  @property
  def config_file(self) -> str:
    return os.path.join(self.path, "config.json")

  @property
  def vocab_dir(self) -> str:
    return os.path.join(self.path, "vocab")

  @property
  def checkpoints_dir(self) -> str:
    return os.path.join(self.path, "checkpoints")

  def config(self) -> ConfigDict:
    """config.json; a malformed file is an error naming it and the line."""
    try:
      with open(self.config_file) as f:
        return ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
      raise ValueError(f"{self.config_file}:{e.lineno}: not valid JSON ({e.msg})") from None
    except FileNotFoundError:
      raise FileNotFoundError(f"{self.config_file} not found: {self.path} is not a run "
                              "directory") from None

  def vocab(self) -> Vocabulary:
    """The tokenizer the run trained with."""
    if not os.path.isdir(self.vocab_dir):
      raise FileNotFoundError(f"{self.vocab_dir} not found: the run's tokenizer is missing "
                              "(training commands save it there)")
    return load_vocab(self.vocab_dir)

  def latest_step(self) -> int | None:
    try:
      return resolve_checkpoint(self.checkpoints_dir)[1]
    except FileNotFoundError:
      return None

  def meta(self, checkpoint: str | None = None) -> dict:
    """{identity, step} of `checkpoint` (a path inside this run) or of the latest one."""
    return read_meta(checkpoint or self.checkpoints_dir)

  def identity(self, checkpoint: str | None = None) -> dict:
    return self.meta(checkpoint).get("identity", {})

  def record(self, cfg: ConfigDict, vocab: Vocabulary) -> None:
    """Writes the resolved config and the tokenizer (process 0), so the run describes
    itself."""
    if jax.process_index() == 0:
      config_lib.save_config(cfg, self.path)
      vocab.save_to(self.vocab_dir)

  def load(self, make_model: Callable[[ConfigDict, dict], Model], *,
           checkpoint: str | None = None, mesh: tuple[int, int, int] | None = None,
           dtype: str | None = None, tokenizer: str | None = None) -> LoadedRun:
    """Params (strict) of `checkpoint` (default: the latest) on the run's mesh, or on `mesh`
    (data, fsdp, tensor); `dtype` changes the compute dtype, an execution setting."""
    cfg = self.config()
    if dtype:
      cfg.model.dtype = dtype
    if mesh is not None:
      cfg.mesh.update(dict(zip(("data", "fsdp", "tensor"), mesh)))
    vocab = load_vocab(tokenizer) if tokenizer else self.vocab()
    if vocab.vocab_size > cfg.model.vocab_size:
      raise ValueError(f"tokenizer has {vocab.vocab_size} ids but the model's vocab_size is "
                       f"{cfg.model.vocab_size}: wrong tokenizer?")
    model = make_model(cfg, self.identity(checkpoint))
    setup = make_setup(model, cfg, Partitioner.from_config(cfg.mesh))
    params, step, _, _ = load_params(checkpoint or self.checkpoints_dir,
                                     setup.abstract_state["params"],
                                     setup.state_shardings["params"], strict=True)
    return LoadedRun(cfg, setup, params, vocab, step, self)
