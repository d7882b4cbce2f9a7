"""One process of a multi-process run: `python -m tests.common.multiprocess_worker PORT N ID OUT`.

Each process has 4 fake CPU devices; together they form one (data=2, fsdp=2, tensor=2) partitioner
and train the tiny GPT for 3 steps on their own rows of the same global batches.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # pylint: disable=g-import-not-at-top
from common.partitioning import Partitioner


def main() -> None:
  port, num, pid, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num,
                             process_id=pid, initialization_timeout=120)
  from configs.gpt import get_config
  from tests.fakes import step_losses

  losses = step_losses(get_config("tiny"), Partitioner(2, 2, 2))[2]
  with open(out, "w") as f:
    json.dump({"losses": losses, "processes": jax.process_count(),
               "devices": jax.device_count()}, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
