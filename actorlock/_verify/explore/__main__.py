"""``python -m actorlock._verify.explore``: the same as ``actorlock explore``."""

from __future__ import annotations

from .cli import main_explore

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_explore())
