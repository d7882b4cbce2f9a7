"""`--variant NAME:KEY=VAL[,KEY=VAL]` arguments: extra configurations a benchmark times beside
its default one (config overrides, e.g. `scanned:model.scan_layers=True`)."""

from __future__ import annotations


def parse_value(s: str):
  """'true'/'false' -> bool, then int, then float, else the string."""
  low = s.lower()
  if low in ("true", "false"):
    return low == "true"
  for cast in (int, float):
    try:
      return cast(s)
    except ValueError:
      pass
  return s


def parse_variant(spec: str) -> tuple[str, dict]:
  """'NAME:KEY=VAL[,KEY=VAL]' -> (NAME, {KEY: value}); a malformed spec exits with one line."""
  name, _, rest = spec.partition(":")
  if not name or not rest:
    raise SystemExit(f"error: --variant {spec!r}: expected NAME:KEY=VAL[,KEY=VAL]")
  overrides = {}
  for kv in rest.split(","):
    k, eq, v = kv.partition("=")
    if not eq:
      raise SystemExit(f"error: --variant {spec!r}: {kv!r} is not KEY=VAL")
    overrides[k.strip()] = parse_value(v.strip())
  return name, overrides
