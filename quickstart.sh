#!/usr/bin/env bash
# The README's main job: install, fetch the Debian-descriptions corpus through apt, build it as a
# TFDS dataset, train its SentencePiece tokenizer, then pretrain the GPT demo preset on it (2 CPU
# cores: about 12 minutes), report validation loss/perplexity and print sampled continuations.
# Extra flags are passed to the trainer, e.g. --config.train.num_steps=200.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --quiet --disable-pip-version-check -e .
# tcmalloc keeps XLA's per-step buffers mapped (~10 % faster on CPU; common/allocator.py).
# Optional: the run falls back to the system allocator if it cannot be installed.
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 ||
   { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; }) ||
    echo "note: libtcmalloc-minimal4 not installed; using the system allocator" >&2
fi
exec python -m gpt_flax.train --config=configs/gpt.py:demo --workdir="${WORKDIR:-workdirs/gpt_demo}" \
  --prepare "$@"
