"""What every `python -m <family>.train` shares: flags, multi-host start-up, data and vocab
checks, and the work dir layout (resolved config + the tokenizer the run was trained with)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import jax
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from common import allocator
from common import config as config_lib
from common.vocab import SentencePieceVocab, Vocabulary, load_vocab

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).")
_PREPARE = flags.DEFINE_bool(
    "prepare", False, "Build the Debian dataset and train the tokenizer first if missing "
    "(uses apt-get; root).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-process runs (multi-GPU "
    "hosts, clusters). On Cloud TPU use --distributed alone: JAX finds the pod itself.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")


def init_distributed() -> None:
  """Multi-host start-up; must run before any other JAX call."""
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


def workdir() -> str:
  if not _WORKDIR.value:
    raise ValueError("--workdir is required")
  return os.path.abspath(os.path.expanduser(_WORKDIR.value))


def prepare_requested() -> bool:
  return _PREPARE.value


def prepare_data(cfg: ConfigDict) -> None:
  """Builds the Debian corpus and trains its tokenizer when they are missing (--prepare)."""
  if cfg.data.dataset == "debian":
    from common.data.debian import prepare_debian  # pylint: disable=g-import-not-at-top
    prepare_debian(cfg.data.data_dir)
  if not os.path.exists(config_lib.tokenizer_path(cfg.data)):
    from common.tokenizer import train_from_dataset  # pylint: disable=g-import-not-at-top
    train_from_dataset(cfg.data.dataset, cfg.data.data_dir, config_lib.tokenizer_path(cfg.data),
                       vocab_size=8000, text_field=cfg.data.text_field)


def load_checked_vocab(cfg: ConfigDict, extra_ids: int = 0) -> Vocabulary:
  """The run's tokenizer; it must fit the model's embedding table."""
  vocab = load_vocab(config_lib.tokenizer_path(cfg.data))
  if extra_ids and vocab.extra_ids != extra_ids:
    if not isinstance(vocab, SentencePieceVocab):  # a tokenizer.json's sentinels are its own
      raise ValueError(f"tokenizer {vocab.path} has {vocab.extra_ids} sentinel ids but "
                       f"data.extra_ids is {extra_ids}; set --config.data.extra_ids="
                       f"{vocab.extra_ids}")
    vocab = type(vocab)(vocab.path, extra_ids=extra_ids)
  if vocab.vocab_size > cfg.model.vocab_size:
    raise ValueError(f"tokenizer {config_lib.tokenizer_path(cfg.data)} has {vocab.vocab_size} ids but "
                     f"model.vocab_size is {cfg.model.vocab_size}; raise model.vocab_size")
  return vocab


def record_run(cfg: ConfigDict, wd: str, vocab: Vocabulary) -> None:
  """Resolved config and tokenizer go with the checkpoints, so a run is self-describing."""
  if jax.process_index() == 0:
    config_lib.save_config(cfg, wd)
    vocab.save_to(os.path.join(wd, "vocab"))


def make_cli(run: Callable[..., Any], family: str, default_preset: str) -> Callable[[], None]:
  """The `cli()` of a `<family>.train` module: config checked before absl parses the flags,
  multi-host start-up, then `run(config, workdir, prepare=...)`; bad input -> one line, exit 2.

  `--config` is defined when the command starts, not at import, so several families' train
  modules can be imported in one process (tests, notebooks, sweeps).
  """
  default_spec = os.path.join(config_lib.CONFIG_DIR, f"{family}.py:{default_preset}")

  def cli() -> None:
    allocator.reexec_with_tcmalloc()
    config_flag = config_flags.DEFINE_config_file(
        "config", default_spec, f"{family} config file[:preset]", lock_config=True)

    @config_lib.exit_on_error
    def main(argv) -> None:
      del argv
      init_distributed()
      run(config_flag.value, workdir(), prepare=prepare_requested())

    config_lib.exit_on_error(config_lib.check_overrides)(sys.argv, default_spec)
    app.run(main)

  return cli
