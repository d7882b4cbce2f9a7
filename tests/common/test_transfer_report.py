"""The grid's statistics, table and plot from hand-made cells."""
import math

from common import transfer_report as report


def _rows():
  acc = {("pretrained", 100): [0.8, 0.7, 0.9], ("random", 100): [0.6, 0.5, 0.7],
         ("pretrained", 1000): [0.9], ("random", 1000): [0.9]}
  return [{"init": init, "budget": n, "acc": a, "f1": a / 2, "seed": i}
          for (init, n), accs in acc.items() for i, a in enumerate(accs)]


def test_summary_means_stds_and_standard_errors():
  s = report.summarize(_rows(), "acc", ("f1",))
  assert [line["budget"] for line in s] == [100, 1000]
  mean, std, count = s[0]["pretrained"]["acc"]
  assert (round(mean, 6), round(std, 6), count) == (0.8, 0.1, 3)
  assert round(s[0]["random"]["f1"][0], 6) == 0.3
  # (0.8 - 0.6) / sqrt(0.1^2/3 + 0.1^2/3)
  assert math.isclose(s[0]["z"], 0.2 / math.sqrt(2 * 0.01 / 3))
  assert s[1]["z"] is None  # one seed each: no spread, no standard error


def test_table_and_plot(tmp_path):
  s = report.summarize(_rows(), "acc", ("f1",))
  text = report.table(s, "acc", ("f1",), ("majority class", 0.5))
  assert "| 100 | 0.8000 ± 0.1000 (3) | 0.6000 ± 0.1000 (3) | +0.2000 | +2.4 | 0.400 / 0.300 |" \
      in text
  assert text.endswith("baseline, majority class: 0.5000")
  path = tmp_path / "curve.png"
  report.plot(s, _rows(), "acc", "accuracy", "title", ("majority class", 0.5), str(path))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
