#!/usr/bin/env python3
"""Draw bench/boot.sh's table as an SVG bar chart: per workload, one pair of bars (wall time,
CPU time) per row, on a common scale within the workload.

Usage: python3 bench/chart.py TABLE.tsv OUT.svg
TABLE.tsv: lines `workload<TAB>row<TAB>wall seconds<TAB>CPU seconds` (bench/boot.sh writes it).
"""
import sys
from html import escape


def main(table, out):
    groups = {}
    order = []
    with open(table) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            workload, row, wall, cpu = parts
            if workload not in groups:
                groups[workload] = []
                order.append(workload)
            groups[workload].append((row, float(wall), float(cpu)))
    label_w, bar_w, bar_h, gap = 250, 460, 11, 8
    width = label_w + bar_w + 90
    y = 40
    body = []
    for workload in order:
        rows = groups[workload]
        top = max(max(w, c) for _, w, c in rows) or 1.0
        body.append(f'<text x="10" y="{y}" font-weight="bold">{escape(workload)}</text>')
        y += 12
        for row, wall, cpu in rows:
            body.append(
                f'<text x="{label_w - 8}" y="{y + bar_h + 4}" text-anchor="end">{escape(row)}</text>'
            )
            for k, (v, colour) in enumerate(((wall, "#3b6ea8"), (cpu, "#e39a3b"))):
                yy = y + k * (bar_h + 1)
                w = bar_w * v / top
                body.append(
                    f'<rect x="{label_w}" y="{yy}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>'
                )
                body.append(
                    f'<text x="{label_w + w + 4:.1f}" y="{yy + bar_h - 2}" font-size="10">{v:.2f} s</text>'
                )
            y += 2 * bar_h + gap
        y += 20
    legend = (
        f'<rect x="{label_w}" y="12" width="12" height="10" fill="#3b6ea8"/>'
        f'<text x="{label_w + 16}" y="21">wall time</text>'
        f'<rect x="{label_w + 100}" y="12" width="12" height="10" fill="#e39a3b"/>'
        f'<text x="{label_w + 116}" y="21">CPU time (all threads)</text>'
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
        f'font-family="sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="white"/>{legend}{"".join(body)}</svg>\n'
    )
    with open(out, "w") as f:
        f.write(svg)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
