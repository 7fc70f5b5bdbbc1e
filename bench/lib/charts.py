"""SVG bar charts for bench/lib/report.py: hand-written SVG, Python 3 standard library only."""

TARGETS = ["direct", "proxyd", "nginx", "haproxy", "caddy"]
COLORS = {"direct": "#9e9e9e", "proxyd": "#d9480f", "nginx": "#2b8a3e", "haproxy": "#1c7ed6",
          "caddy": "#7048e8"}


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def bar_chart(path, title, unit, groups, ref_line=None):
    """groups: [(label, [(target, (med, lo, hi) or None)])]. Grouped vertical bars with min–max
    whiskers. ref_line: (value, label) drawn across, e.g. 1.0 = nginx."""
    bar_w, gap, group_gap = 26, 4, 30
    left, top, bottom, right = 70, 50, 60, 20
    height = 260
    n_bars = max((len(g[1]) for g in groups), default=1)
    group_w = n_bars * (bar_w + gap) + group_gap
    width = left + right + max(1, len(groups)) * group_w
    vmax = max([s[2] for _, bars in groups for _, s in bars if s] + [ref_line[0] if ref_line else 0] + [1e-9])
    vmax *= 1.12

    def y(v):
        return top + height - (v / vmax) * height

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + bottom + 24}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{esc(title)}</text>',
           f'<text x="14" y="{top + height / 2}" transform="rotate(-90 14 {top + height / 2})" text-anchor="middle">{esc(unit)}</text>']
    for i in range(5):  # grid
        v = vmax / 1.12 * i / 4
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e9ecef"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" fill="#495057">{v:,.{2 if vmax < 10 else 0}f}</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + height}" stroke="#868e96"/>')
    for gi, (label, bars) in enumerate(groups):
        gx = left + group_gap / 2 + gi * group_w
        for bi, (target, s) in enumerate(bars):
            x = gx + bi * (bar_w + gap)
            if not s:
                continue
            m, lo, hi = (max(0.0, v) for v in s)  # bars start at 0; a negative median shows as 0
            out.append(f'<rect x="{x:.1f}" y="{y(m):.1f}" width="{bar_w}" height="{max(0.5, y(0) - y(m)):.1f}" '
                       f'fill="{COLORS.get(target, "#495057")}"><title>{esc(target)}: {s[0]:,.3g} (min {s[1]:,.3g}, max {s[2]:,.3g})</title></rect>')
            if hi > lo:
                cx = x + bar_w / 2
                out.append(f'<line x1="{cx}" x2="{cx}" y1="{y(hi):.1f}" y2="{y(lo):.1f}" stroke="black"/>')
                out.append(f'<line x1="{cx - 4}" x2="{cx + 4}" y1="{y(hi):.1f}" y2="{y(hi):.1f}" stroke="black"/>')
                out.append(f'<line x1="{cx - 4}" x2="{cx + 4}" y1="{y(lo):.1f}" y2="{y(lo):.1f}" stroke="black"/>')
            v0 = s[0]
            lab = f"{v0:.2f}" if vmax < 10 else f"{v0:,.0f}" if abs(v0) >= 100 else f"{v0:.1f}"
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y(max(m, hi)) - 4:.1f}" text-anchor="middle" font-size="9">{lab}</text>')
        out.append(f'<text x="{gx + len(bars) * (bar_w + gap) / 2:.1f}" y="{top + height + 16}" text-anchor="middle">{esc(label)}</text>')
    if ref_line:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(ref_line[0]):.1f}" y2="{y(ref_line[0]):.1f}" '
                   f'stroke="#2b8a3e" stroke-dasharray="5,3"/>')
        out.append(f'<text x="{width - right}" y="{y(ref_line[0]) - 3:.1f}" text-anchor="end" fill="#2b8a3e">{esc(ref_line[1])}</text>')
    present = [t for t in TARGETS if any(t == b[0] for _, bars in groups for b in bars)]
    lx = left
    for t in present:  # legend
        out.append(f'<rect x="{lx}" y="{top + height + 32}" width="10" height="10" fill="{COLORS[t]}"/>')
        out.append(f'<text x="{lx + 14}" y="{top + height + 41}">{t}</text>')
        lx += 80
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
