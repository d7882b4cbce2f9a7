#!/usr/bin/env bash
# The README's main job: install, fetch the Debian-descriptions corpus through apt, build it as a
# TFDS dataset, train its SentencePiece tokenizer, then pretrain the GPT demo preset on it (2 CPU
# cores: about 12 minutes), report validation loss/perplexity and print sampled continuations.
# Extra flags are passed to the trainer, e.g. --config.train.num_steps=200.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --quiet --disable-pip-version-check -e .
exec python -m gpt_flax.train --config=configs/gpt.py:demo --workdir="${WORKDIR:-workdirs/gpt_demo}" \
  --prepare "$@"
