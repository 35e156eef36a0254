"""Writes one benchmark's section of docs/BENCHMARKS.md, replacing the previous run's."""
import datetime
import platform
import re
import os
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = """# Benchmarks

Each section is written by the command it names, which runs Wuwei and the reference
implementation (mlx-lm 0.32.2 on the same MLX 0.32.2 build) alternately in the same run.
Ratios matter; absolute numbers move with machine load.
"""


def _openblas_core():
    """Exports OPENBLAS_CORETYPE for the processes a benchmark starts (Wuwei, and mlx-lm with
    OpenBLAS preloaded) when OpenBLAS would fall back to its oldest kernels on a CPU it does not
    recognise: the same rule, and the reason, as scripts/openblas-core.sh."""
    if platform.system() != "Linux" or os.environ.get("OPENBLAS_CORETYPE"):
        return
    try:
        import ctypes

        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        if lib.openblas_get_corename().decode().lower() != "prescott":
            return
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return
    if "avx512f" in flags and "avx512bw" in flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif "avx2" in flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


_openblas_core()


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
    cores = f"{os.cpu_count()} cores"
    core = os.environ.get("OPENBLAS_CORETYPE")
    return f"{cores}, OpenBLAS {core} kernels" if core else cores
