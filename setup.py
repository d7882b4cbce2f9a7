"""flax-pretrain: BERT, T5 and GPT pretraining and fine-tuning in JAX/Flax NNX."""

from setuptools import setup

# Compatible ranges, pinned to the minor versions this code is tested with: jax/flax/orbax move
# fast and their drift is what breaks installs most often.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "chex>=0.1.92,<0.2",
    "tensorflow-datasets>=4.9.10,<4.10",
    "grain>=0.2.18,<0.3",
    "cloudpickle>=3.0,<4",          # input worker processes (data.num_workers)
    "array-record>=0.8,<0.9",
    "sentencepiece>=0.2.1,<0.3",
    "absl-py>=2.1,<3",
    "ml-collections>=1.1,<2",
    "numpy>=2.0,<3",
    "tensorboardX>=2.6.2,<2.7",
    "protobuf>=4.25",
    "rouge-score>=0.1.2,<0.2",      # T5 summarization / ICL generation scoring
    "tokenizers>=0.20,<1",          # tokenizer.json vocabularies (imported GPT-2 / BERT)
    "safetensors>=0.4,<1",          # Hugging Face weights import / export
    "matplotlib>=3.8,<4",           # scaling-law plots
    "scipy>=1.11,<2",               # scaling-law fits
]

setup(
    name="flax-pretrain",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=["common", "common.data", "common.vocab", "bert_flax", "t5x_lite", "gpt_flax",
              "configs"],
    package_data={"common": ["aot_targets/*.txtpb"]},   # GPU targets for common.aot
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch/transformers: logit-parity tests of the Hugging Face converters. torch==2.13.0 is
        # the CPU wheel these machines carry locally; a looser pin would pull a CUDA build.
        # pytest-xdist: run_tests.sh runs one worker per core.
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "tensorboard>=2.16,<3",
                 "portpicker>=1.6,<2", "torch==2.13.0", "transformers>=5.0,<6"],
        # Ahead-of-time compilation for TPU slices and GPU hosts on a CPU machine (common/aot):
        # libtpu's and the CUDA plugin's compilers (395 MB of wheels, 1.2 GB installed; the
        # CUDA libraries themselves are not needed to compile).
        "aot": ["libtpu==0.0.42.1", "jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2"],
        "bench": ["torch==2.13.0", "transformers>=5.0,<6"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    },
    entry_points={"console_scripts": [
        f"flax-pretrain-{name}={module}:cli_main" for name, module in (
            ("gpt", "gpt_flax.train"), ("bert", "bert_flax.train"), ("t5", "t5x_lite.train"),
            ("generate", "gpt_flax.generate"), ("icl", "gpt_flax.icl"),
            ("icl-synthetic", "gpt_flax.icl_synthetic"), ("scaling", "gpt_flax.scaling"),
            ("infer", "t5x_lite.infer"), ("rouge", "common.rouge"),
            ("convert", "common.convert"), ("aot", "common.aot"),
            ("prepare", "common.data.prepare"), ("tokenizer", "common.tokenizer"))]},
)
