"""Shared by nfx's benchmark scripts: environment description and writing one sub-section of
docs/BENCHMARKS.md (`## <section>` → `### <key>…`) without touching anything else, atomically."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_line(device) -> str:
    import timm
    import torch

    if device.type == "cuda":
        dev = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        dev = f"{cpu_name()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores visible"
    return (f"{dev}; torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}; "
            f"{dt.date.today().isoformat()}")


def write_subsection(section: str, key: str, body: str, intro: str = "") -> None:
    """Replace (or append) `### {key}` inside `## {section}` in docs/BENCHMARKS.md."""
    text = DOC.read_text() if DOC.exists() else "# nfx benchmarks\n\n"
    sec_re = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    m = sec_re.search(text)
    sec = m.group(0) if m else f"## {section}\n\n{intro.strip()}\n\n"
    block = f"### {key}\n\n{body.strip()}\n\n"
    sub_re = re.compile(rf"^### {re.escape(key)}\n.*?(?=^### |^## |\Z)", re.S | re.M)
    new_sec = sub_re.sub(lambda _: block, sec) if sub_re.search(sec) else sec.rstrip() + "\n\n" + block
    if intro and m is None:
        pass
    text = text.replace(sec, new_sec) if m else text.rstrip() + "\n\n" + new_sec
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_name(f".{DOC.name}.tmp")
    tmp.write_text(text.rstrip() + "\n")
    os.replace(tmp, DOC)


def write_keeping_reading(out: Path, lines: list[str],
                          fix: str = "rerun the runs behind the missing rows (their cache is gone)") -> None:
    """Write a generated doc (`lines`: its tables) atomically, keeping the "## What it shows" section
    of the existing file: the reading of the tables is written by a person, and a rerun keeps it
    (it may need updating). Refuses (one line naming the sections, then `fix`) to write fewer table
    rows in any section than the doc shows: the runs behind a doc live in a cache a new machine lacks."""
    old = out.read_text() if out.is_file() else ""
    tables, marker, reading = old.partition("## What it shows")
    lost = dropped_rows(tables, "\n".join(lines))
    if lost:
        raise SystemExit(f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}: this run would drop table rows "
                         f"({'; '.join(lost)}); {fix}")
    reading = marker + reading if marker else "## What it shows\n\n(to be written)\n"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join([*lines, reading.rstrip()]) + "\n")
    os.replace(tmp, out)

def table_rows(text: str) -> dict[str, int]:
    """Table body rows per `## ` section of a markdown doc (header and separator rows not counted)."""
    counts: dict[str, int] = {}
    section, prev_table = "", False
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        is_table = line.startswith("|")
        if is_table and prev_table and not set(line) <= set("|-: "):
            counts[section] = counts.get(section, 0) + 1
        prev_table = is_table  # a table's first row is its header: body rows follow another table row
    return counts


def dropped_rows(old: str, new: str) -> list[str]:
    """Sections whose tables would lose rows if `new` replaced `old` (a generated doc regenerated from
    fewer runs than it showed): 'section: old → new rows'."""
    a, b = table_rows(old), table_rows(new)
    return [f"{sec or 'top'}: {n} → {b.get(sec, 0)} rows" for sec, n in a.items() if b.get(sec, 0) < n]
