"""Where every benchmark script writes its results: bench/out/ (git-ignored)."""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "out"


def save(name: str, data: dict | str) -> Path:
    """Write `data` (JSON for a dict, else text as given) to bench/out/<name>."""
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2) + "\n")
    return path
