"""A staged directory replaces its target whole, or leaves it as it was."""
import os

import pytest

from common.data.staging import staged_dir


def test_success_replaces_the_target_and_failure_leaves_it(tmp_path):
  final = tmp_path / "raw"
  final.mkdir()
  (final / "old.txt").write_text("old")
  with pytest.raises(RuntimeError):
    with staged_dir(str(final)) as tmp:
      (tmp_path / "raw_marker").write_text(tmp)
      open(os.path.join(tmp, "new.txt"), "w").close()
      raise RuntimeError("fetch failed")
  assert sorted(os.listdir(final)) == ["old.txt"]
  assert not os.path.exists((tmp_path / "raw_marker").read_text())
  with staged_dir(str(final)) as tmp:
    open(os.path.join(tmp, "new.txt"), "w").close()
  assert sorted(os.listdir(final)) == ["new.txt"]
  assert sorted(os.listdir(tmp_path)) == ["raw", "raw_marker"]
