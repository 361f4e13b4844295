"""Explain's `index.html`: the summary as one page that links to its grids and maps by relative
paths only, so the output folder can be moved, zipped or served as it is."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from pipeline.explain.ranking import METRICS
from pipeline.runs import write_text


def write_page(out: Path, summary: dict) -> Path:
    env = Environment(loader=PackageLoader("pipeline.explain", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    page = env.get_template("index.html.j2").render(s=summary, metrics=METRICS)
    write_text(Path(out) / "index.html", page)
    return Path(out) / "index.html"
