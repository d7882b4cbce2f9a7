"""Shared modules of flax-pretrain (see CONTRIBUTING.md for the map)."""
import os

# XLA's C++ INFO lines (plugin discovery, allocator notes) stay off the console unless asked
# for; set before anything imports jax.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
