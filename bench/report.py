"""Writes one benchmark's section of docs/BENCHMARKS.md, replacing the previous run's."""
import datetime
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = """# Benchmarks

Each section is written by the command it names, which runs Wuwei and the reference
implementation (mlx-lm 0.32.2 on the same MLX 0.32.2 build) alternately in the same run.
Ratios matter; absolute numbers move with machine load.
"""


def write_section(key, title, command, body, machine=None, stamp=None):
    """`machine` and `stamp` name where and when it was measured when that was not here and now
    (bench/gpu/ measures on a borrowed machine and writes the section back here)."""
    text = DOC.read_text() if DOC.exists() else HEADER
    stamp = stamp or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine or f"{platform.machine()} {platform.system()} ({_cpu()})"
    section = (
        f"<!-- bench:{key} -->\n## {title}\n\n"
        f"Command: `{command}`  \nMeasured: {stamp} on {machine}.\n\n{body}\n<!-- /bench:{key} -->\n"
    )
    pattern = re.compile(rf"<!-- bench:{key} -->.*?<!-- /bench:{key} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def _cpu():
    try:
        import os
        return f"{os.cpu_count()} cores"
    except Exception:
        return "unknown CPU"
