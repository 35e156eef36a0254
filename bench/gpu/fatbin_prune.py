"""Keeps only the cubins of the given SM architectures (default 90: H100/H200) in every fatbin
of a shared library's .nv_fatbin section, so a CUDA libmlx compresses to a size that can be
copied to a borrowed GPU machine (mlx-cuda-13 0.32.2: 142 MB with sm_75/80/90/100/120/121).

Each fatbin is rewritten in place as a valid fatbin holding only the kept entries (moved to its
front, its size field updated); the bytes it no longer uses are zeroed, so every offset and
section size stays as it was (nothing else in the library needs fixing) and the zeros
compress to nothing. PTX entries go too: they would only be JIT-compiled for an architecture
with no cubin kept. A library with no fatbins (the CPU build) is copied unchanged.

usage: fatbin_prune.py IN OUT [ARCH...]      also: fatbin_prune.py --list LIB
"""
import collections
import struct
import subprocess
import sys

MAGIC = 0xBA55ED50
KIND_PTX, KIND_CUBIN = 1, 2


def section(path):
    """(offset, size) of .nv_fatbin in the file, or None."""
    out = subprocess.check_output(["readelf", "-S", "-W", path]).decode()
    rows = [line.replace("[ ", "[").split() for line in out.splitlines() if ".nv_fatbin" in line]
    if not rows:
        return None
    assert len(rows) == 1, rows
    return int(rows[0][4], 16), int(rows[0][5], 16)


def fatbins(data, off, size):
    """Yields (header position, header size, payload size, [(entry position, kind, arch, length)])."""
    pos = off
    while pos < off + size - 16:
        magic, _ver, hsz, fsz = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:
            pos += 8  # fatbins are 8-byte aligned, with padding between them
            continue
        e, end, entries = pos + hsz, pos + hsz + fsz, []
        while e < end:
            kind, _, ehsz, psize = struct.unpack_from("<HHIQ", data, e)
            (arch,) = struct.unpack_from("<I", data, e + 28)
            entries.append((e, kind, arch, ehsz + psize))
            e += ehsz + psize
        assert e == end, (pos, e, end)
        yield pos, hsz, fsz, entries
        pos = end


def main():
    if sys.argv[1] == "--list":
        path = sys.argv[2]
        data = open(path, "rb").read()
        sec = section(path)
        if not sec:
            print("no .nv_fatbin section")
            return
        stats, n = collections.Counter(), 0
        for _, _, _, entries in fatbins(data, *sec):
            n += 1
            for _, kind, arch, length in entries:
                stats[("PTX" if kind == KIND_PTX else "cubin" if kind == KIND_CUBIN else kind, arch)] += length
        print(f"{n} fatbins in {sec[1]} bytes")
        for (kind, arch), b in sorted(stats.items(), key=str):
            print(f"  {kind} sm_{arch}: {b} bytes")
        return
    src, dst = sys.argv[1], sys.argv[2]
    keep = {int(a) for a in sys.argv[3:]} or {90}
    data = bytearray(open(src, "rb").read())
    sec = section(src)
    if not sec:
        open(dst, "wb").write(data)
        print(f"{src}: no fatbins, copied")
        return
    blobs, kept, dropped, missing = 0, 0, 0, 0
    for pos, hsz, fsz, entries in list(fatbins(data, *sec)):
        blobs += 1
        body = b"".join(bytes(data[e:e + n]) for e, kind, arch, n in entries
                        if kind == KIND_CUBIN and arch in keep)
        if not body:
            # Nothing for these architectures in this fatbin (a kernel built only for newer
            # GPUs): keep it whole rather than leave an empty, invalid fatbin.
            missing += 1
            continue
        dropped += fsz - len(body)
        data[pos + hsz:pos + hsz + fsz] = body + bytes(fsz - len(body))
        struct.pack_into("<Q", data, pos + 8, len(body))
        kept += len(body)
    open(dst, "wb").write(data)
    print(f"{blobs} fatbins: kept {kept} bytes of sm {sorted(keep)} cubins, zeroed {dropped} bytes"
          + (f"; {missing} fatbins without them left whole" if missing else ""))


if __name__ == "__main__":
    main()
