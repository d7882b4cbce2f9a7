"""A raw-data directory that appears whole or not at all (fetchers of the Debian and sentiment
corpora write into it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def staged_dir(final: str) -> Iterator[str]:
  """A fresh directory beside `final` to fill; when the block ends normally it replaces
  `final` with one rename, when it raises it is removed, so a failed or interrupted fetch never
  leaves a half-written `final`."""
  parent = os.path.dirname(os.path.abspath(final))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".incomplete-" + os.path.basename(final))
  try:
    yield tmp
    if os.path.exists(final):
      shutil.rmtree(final)
    os.replace(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
