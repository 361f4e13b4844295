"""The config loader under generated bad input: random YAML text, random keys and dotted overrides
with random values of random types, numbers outside their keys' ranges. Every case ends
`python -m pipeline` with exit status 2 and one line on stderr, never a traceback, and writes
nothing outside the run folder.

Cases run in process through the command line's `main` (a few hundred a second would be a
subprocess's start-up each); a handful run as real subprocesses. Every case runs `cams`, whose
classifier is never there: a config that happens to be valid stops at that, before any work.
"""
from __future__ import annotations

import dataclasses
import math
import os
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.config import Config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_YAML = (REPO / "configs" / "default.yaml").read_text()
CASES_PER_KIND = 130


def schema_keys(node=None, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf key of the schema, dotted, with its dataclass field."""
    node = Config() if node is None else node
    keys = {}
    for spec in dataclasses.fields(node):
        value = getattr(node, spec.name)
        if dataclasses.is_dataclass(value):
            keys.update(schema_keys(value, f"{prefix}{spec.name}."))
        else:
            keys[f"{prefix}{spec.name}"] = spec
    return keys


# The run folder is the one place a run may write, so it stays fixed (the last override wins).
KEYS = sorted(key for key in schema_keys() if key != "run_dir")


class Values:
    """Random values of random types, as YAML text."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def text(self, length: int, alphabet: str = string.printable) -> str:
        return "".join(self.rng.choice(list(alphabet), size=length))

    def scalar(self) -> str:
        makers = [
            lambda: str(int(self.rng.integers(-10 ** 12, 10 ** 12))),
            lambda: str(self.rng.choice(["-1", "0", "-0", "2147483648", "18446744073709551617", "1e400"])),
            lambda: repr(float(self.rng.normal(0, 1000))),
            lambda: str(self.rng.choice([".nan", ".inf", "-.inf", "nan", "inf", "-0.0", "1e-320"])),
            lambda: str(self.rng.choice(["true", "false", "null", "~", "''", '""', "yes", "off"])),
            lambda: self.text(int(self.rng.integers(1, 12)), string.ascii_letters + string.digits + "._-/"),
            lambda: self.text(int(self.rng.integers(1, 12))),
            lambda: str(self.rng.choice(["${nonexistent}", "${cls}", "${oc.env:CAMSEG_NO_SUCH_VAR}", "${",
                                         "${cls.epochs}", "${run_dir}", "${.}", "$${x}", "${oc.decode:'[1'}"])),
        ]
        return makers[int(self.rng.integers(len(makers)))]()

    def value(self, depth: int = 0) -> str:
        kind = int(self.rng.integers(6 if depth < 2 else 4))
        if kind < 4:
            return self.scalar()
        count = int(self.rng.integers(0, 4))
        if kind == 4:
            return "[" + ", ".join(self.value(depth + 1) for _ in range(count)) + "]"
        return "{" + ", ".join(f"{self.key()}: {self.value(depth + 1)}" for _ in range(count)) + "}"

    def key(self) -> str:
        """A schema key, a misspelt one, or random text."""
        key = str(self.rng.choice(KEYS))
        roll = self.rng.random()
        if roll < 0.8:
            return key
        if roll < 0.9:
            at = int(self.rng.integers(len(key)))
            return key[:at] + self.text(1, string.ascii_lowercase + "._") + key[at + 1:]
        return self.text(int(self.rng.integers(1, 10)), string.ascii_letters + "._[]=")


def mutated(rng: np.random.Generator, text: str) -> str:
    """`text` with a few characters deleted, replaced or inserted at random places."""
    chars = list(text)
    for _ in range(int(rng.integers(1, 6))):
        at = int(rng.integers(len(chars)))
        action = rng.integers(3)
        if action == 0:
            del chars[at]
        elif action == 1:
            chars[at] = str(rng.choice(list(":[]{}-#&*!|>'\"%@`,\t\n ${}")))
        else:
            chars.insert(at, str(rng.choice(list(string.printable))))
    return "".join(chars)


def nested(key: str, value: str) -> str:
    """A YAML line setting the dotted `key`: `cls.epochs` as `cls: {epochs: value}`."""
    *sections, name = key.split(".")
    return "".join(f"{section}: {{" for section in sections) + f"{name}: {value}" + "}" * len(sections)


def out_of_range(rng: np.random.Generator) -> tuple[str, str]:
    """A ranged key and a number just outside its range (or not finite)."""
    ranged = {key: spec.metadata["range"] for key, spec in schema_keys().items() if "range" in spec.metadata}
    key = str(rng.choice(sorted(ranged)))
    allowed = ranged[key]
    outside = [value for value in (
        None if allowed.at_least is None else allowed.at_least - 1,
        allowed.above,
        None if allowed.at_most is None else allowed.at_most + 1,
        allowed.below) if value is not None]
    is_float = "float" in str(schema_keys()[key].type)
    if is_float:
        outside += [math.nan, math.inf]
    value = outside[int(rng.integers(len(outside)))]
    text = (".nan" if math.isnan(value) else ".inf" if math.isinf(value) else repr(float(value))) if is_float \
        else str(int(value))
    is_list = "list" in str(schema_keys()[key].type)
    return key, f"[{text}]" if is_list else text


def cases(tmp: Path) -> list[tuple[str, list[str], str | None]]:
    """(kind, argv after the stage, the key a line must name or None) for every generated case."""
    rng = np.random.default_rng(20240607)
    values = Values(rng)
    generated = []
    for index in range(CASES_PER_KIND):
        config = tmp / f"random-{index}.yaml"
        raw = values.text(int(rng.integers(0, 200)), string.printable + "\x00\x7f\u00e9\u2028")
        config.write_bytes(raw.encode("utf-8", "surrogatepass") if rng.random() < 0.8
                           else rng.bytes(int(rng.integers(1, 100))))
        generated.append(("random yaml", ["--config", str(config)], None))
    for index in range(CASES_PER_KIND):
        config = tmp / f"mutated-{index}.yaml"
        config.write_text(mutated(rng, DEFAULT_YAML))
        generated.append(("mutated yaml", ["--config", str(config)], None))
    for index in range(CASES_PER_KIND):
        config = tmp / f"keys-{index}.yaml"
        lines = [nested(values.key(), values.value()) for _ in range(int(rng.integers(1, 4)))]
        config.write_text("\n".join(lines) + "\n")
        generated.append(("random keys in yaml", ["--config", str(config)], None))
    for _ in range(CASES_PER_KIND):
        overrides = [f"{values.key()}={values.value()}" for _ in range(int(rng.integers(1, 4)))]
        generated.append(("random overrides", ["--config", str(tmp / "empty.yaml"), *overrides], None))
    for _ in range(CASES_PER_KIND):
        key, value = out_of_range(rng)
        generated.append(("out of range", ["--config", str(tmp / "empty.yaml"), f"{key}={value}"], key))
    return generated


def tree(folder: Path, leave_out: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file and folder under `folder` except `leave_out` and what it holds."""
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(folder.rglob("*"))
            if path != leave_out and leave_out not in path.parents}


def check_one_error_line(code: int, err: str, case: str) -> str:
    assert code == 2, case
    assert "Traceback" not in err, f"{case}\n{err}"
    lines = err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}\n{err}"
    return lines[0]


def test_every_generated_bad_config_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative paths a random config names land here, where they are watched
    (tmp_path / "empty.yaml").write_text("{}\n")
    run_dir = tmp_path / "run"
    generated = cases(tmp_path)
    assert len(generated) >= 500
    before = tree(tmp_path, run_dir)
    threads = torch.get_num_threads()
    for kind, argv, key in generated:
        case = f"{kind}: {argv}"
        try:
            code = main(["cams", *argv, f"run_dir={run_dir}"])
        finally:
            torch.set_num_threads(threads)  # a valid random `threads` key sets this process's
        line = check_one_error_line(code, capsys.readouterr().err, case)
        if key is not None:
            assert f"config key '{key}" in line, case
    assert tree(tmp_path, run_dir) == before
    assert not run_dir.exists() or not [p for p in run_dir.rglob("*") if p.is_file()]


@pytest.mark.parametrize("config, overrides, named", [
    ("cls: {epochs: [\n", [], "bad.yaml: not a readable YAML file"),
    ("run_dir: ${nonexistent}\n", [], "config key 'run_dir'"),
    ("- a list\n", [], "bad.yaml: holds a list"),
    ("{}\n", ["pseudo.fg_threshold_high=1.5"], "config key 'pseudo.fg_threshold_high': 1.5"),
    ("{}\n", ["cls.epochs=[1"], "override 'cls.epochs=[1'"),
])
def test_bad_config_through_a_real_process(tmp_path, config, overrides, named):
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    if "run_dir" not in config:  # an override would win over the file's broken one
        overrides = [*overrides, f"run_dir={tmp_path / 'run'}"]
    done = subprocess.run([sys.executable, "-m", "pipeline", "cams", "--config", str(path), *overrides],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert named in check_one_error_line(done.returncode, done.stderr, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
