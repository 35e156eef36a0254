#!/usr/bin/env python3
"""Draws the app's icons (an ensō: an open brush circle) into src-tauri/icons/.

Pure standard library so that it runs anywhere; the PNGs it writes are committed, so this only
needs running again when the drawing changes:  python3 scripts/make-icons.py
"""

import math
import struct
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src-tauri" / "icons"


def png(path, size, pixel):
    """Writes an RGBA PNG; `pixel(x, y)` returns (r, g, b, a) for the pixel's centre."""
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter: none
        for x in range(size):
            rows.extend(pixel(x + 0.5, y + 0.5))
    chunk = lambda kind, data: (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )
    data = b"\x89PNG\r\n\x1a\n"
    data += chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(bytes(rows), 9))
    data += chunk(b"IEND", b"")
    path.write_bytes(data)


def enso_coverage(size, x, y, thickness, gap_deg=40.0, samples=4):
    """How much of the pixel at (x, y) the ring covers (0..1), supersampled. The ring thins
    towards its open end, like a brush stroke lifting off."""
    c = size / 2
    r = size * 0.36
    hit = 0
    for sy in range(samples):
        for sx in range(samples):
            px = x - 0.5 + (sx + 0.5) / samples - c
            py = y - 0.5 + (sy + 0.5) / samples - c
            # angle measured clockwise from the top; the gap sits just left of the top
            ang = (math.degrees(math.atan2(px, -py)) + 360) % 360
            if ang > 360 - gap_deg:
                continue
            t = ang / (360 - gap_deg)  # 0 at the start of the stroke, 1 at its end
            half = thickness * (1.0 - 0.55 * t) / 2
            if abs(math.hypot(px, py) - r) <= half:
                hit += 1
    return hit / (samples * samples)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    # Tray icons are templates on macOS (black + alpha; the system tints them), and plain
    # dark glyphs elsewhere. "tray-off" is drawn hollow-looking (thin) for "daemon not running".
    for name, size, thick, rgb in [
        ("tray.png", 32, 5.0, (0, 0, 0)),
        ("tray@2x.png", 64, 10.0, (0, 0, 0)),
        ("tray-off.png", 32, 1.6, (0, 0, 0)),
    ]:
        png(OUT / name, size, lambda x, y: (*rgb, round(255 * enso_coverage(size, x, y, thick))))
    # App icons: a dark ink ensō on a warm paper disc.
    for name, size in [("32x32.png", 32), ("128x128.png", 128), ("icon.png", 512)]:
        def pixel(x, y, size=size):
            c = size / 2
            d = math.hypot(x - c, y - c)
            disc = max(0.0, min(1.0, size * 0.47 - d + 0.5))
            ink = enso_coverage(size, x, y, size * 0.12, samples=3)
            r, g, b = (
                round(243 * (1 - ink) + 30 * ink),
                round(236 * (1 - ink) + 30 * ink),
                round(220 * (1 - ink) + 34 * ink),
            )
            return (r, g, b, round(255 * max(disc, ink)))

        png(OUT / name, size, pixel)
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
