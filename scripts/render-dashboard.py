#!/usr/bin/env python3
"""Renders grafana/registry-proxy.json as a static HTML page from what a
real Prometheus holds, for a screenshot where no Grafana is at hand.

    render-dashboard.py DASHBOARD PROMETHEUS_URL START END OUT.html

Each panel is drawn where its gridPos puts it (24 columns): a `stat` panel
as its last value, a `timeseries` panel as SVG lines of `query_range` over
START..END (Unix seconds). Grafana's variables are replaced as Grafana
would for "All" and a short range: $namespace by .*, $__rate_interval by
5s, $__range by the whole span. Only the standard library is used.
"""

import html
import json
import sys
import urllib.parse
import urllib.request

COLUMN = 52  # pixels per grid column
ROW = 34  # pixels per grid row
COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2"]


def query(base, path, params):
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        body = json.load(answer)
    if body.get("status") != "success":
        raise SystemExit(f"{url}: {body}")
    return body["data"]["result"]


def expand(expr, span):
    return (
        expr.replace("$namespace", ".*")
        .replace("$__rate_interval", "5s")
        .replace("$__range", f"{max(int(span), 1)}s")
    )


def label(fmt, metric):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"
    out = fmt
    for key, value in metric.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def human(value, unit):
    scales = {
        "bytes": (1024, ["B", "KiB", "MiB", "GiB", "TiB"]),
        "Bps": (1024, ["B/s", "KiB/s", "MiB/s", "GiB/s"]),
    }
    if unit == "percentunit":
        return f"{100 * value:.1f} %"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit in scales:
        step, names = scales[unit]
        for name in names:
            if abs(value) < step or name == names[-1]:
                return f"{value:.1f} {name}"
            value /= step
    if unit == "reqps":
        return f"{value:.2f}/s"
    return f"{value:.3g}"


def timeseries(panel, base, start, end):
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    series = []
    for target in panel["targets"]:
        result = query(
            base,
            "query_range",
            {
                "query": expand(target["expr"], end - start),
                "start": start,
                "end": end,
                "step": max(1, int((end - start) / 240)),
            },
        )
        for s in result:
            points = [(float(t), float(v)) for t, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
            if points:
                series.append((label(target.get("legendFormat", ""), s["metric"]), points))
    w = panel["gridPos"]["w"] * COLUMN - 24
    h = panel["gridPos"]["h"] * ROW - 70
    top = max([v for _, pts in series for _, v in pts] + [panel["fieldConfig"]["defaults"].get("max", 0), 1e-9])
    left = 64
    svg = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}">']
    for frac in (0, 0.5, 1):
        y = 4 + (h - 20) * (1 - frac)
        svg.append(f'<line x1="{left}" x2="{w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        svg.append(f'<text x="0" y="{y + 4:.1f}" class="axis">{html.escape(human(top * frac, unit))}</text>')
    for i, (_, points) in enumerate(series):
        coords = " ".join(
            f"{left + (w - left) * (t - start) / max(end - start, 1):.1f},{4 + (h - 20) * (1 - v / top):.1f}"
            for t, v in points
        )
        svg.append(f'<polyline points="{coords}" fill="none" stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="2"/>')
    svg.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{COLOURS[i % len(COLOURS)]}"></i>{html.escape(name)}</span>'
        for i, (name, _) in enumerate(series)
    )
    return "".join(svg) + f'<div class="legend">{legend or "no data"}</div>'


def stat(panel, base, start, end):
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    result = query(base, "query", {"query": expand(panel["targets"][0]["expr"], end - start), "time": end})
    value = human(float(result[0]["value"][1]), unit) if result else "–"
    return f'<div class="stat">{html.escape(value)}</div>'


def main():
    dashboard, base, start, end, out = sys.argv[1:6]
    start, end = float(start), float(end)
    with open(dashboard) as f:
        board = json.load(f)
    boxes = []
    for panel in board["panels"]:
        g = panel["gridPos"]
        body = (stat if panel["type"] == "stat" else timeseries)(panel, base, start, end)
        boxes.append(
            f'<div class="panel" style="left:{g["x"] * COLUMN}px;top:{g["y"] * ROW}px;'
            f'width:{g["w"] * COLUMN - 12}px;height:{g["h"] * ROW - 12}px">'
            f'<h3>{html.escape(panel["title"])}</h3>{body}</div>'
        )
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"]) * ROW
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(board["title"])}</title><style>
body{{margin:16px;background:#111217;color:#d8d9da;font:13px system-ui,sans-serif}}
h1{{font-size:17px;margin:0 0 12px}} .board{{position:relative;height:{height}px}}
.panel{{position:absolute;background:#181b1f;border:1px solid #2c3235;border-radius:4px;padding:6px 10px;box-sizing:border-box;overflow:hidden}}
h3{{font-size:13px;margin:0 0 6px;font-weight:500}} .stat{{font-size:34px;color:#73bf69;margin-top:10px}}
.grid{{stroke:#2c3235}} .axis{{font-size:10px;fill:#8e8e8e}} .legend{{font-size:11px;color:#ccccdc}}
.key{{margin-right:12px;white-space:nowrap}} .key i{{display:inline-block;width:12px;height:3px;margin-right:4px;vertical-align:middle}}
</style></head><body><h1>{html.escape(board["title"])} — rendered from Prometheus, {int(end - start)} s</h1>
<div class="board">{"".join(boxes)}</div></body></html>"""
    with open(out, "w") as f:
        f.write(page)


if __name__ == "__main__":
    main()
