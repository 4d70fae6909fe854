"""The champion/challenger report as one self-contained HTML page: inline SVG plots, inline CSS,
no script and nothing fetched, so it opens anywhere (a mail attachment, an air-gapped laptop).

Input: the per-window records of :class:`operators.experiments.WindowComparison` (``summary()``),
as the stream emits them and the registry stores them.
"""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

WIDTH, HEIGHT, PAD = 640, 260, 60


def merge_windows(windows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several windows of one pair taken together (counts and histograms add up;
    agreement and the mean difference are weighted by events compared)."""
    if not windows:
        raise ValueError("no comparison windows to report")
    compared = sum(w["compared"] for w in windows)
    agreed = sum((w["agreement"] or 0) * w["compared"] for w in windows)
    flips: dict[tuple[str, str], int] = {}
    for w in windows:
        for f in w["flips"]:
            key = (f["champion"], f["challenger"])
            flips[key] = flips.get(key, 0) + f["count"]
    first = windows[0]
    champion_hist = [sum(w["champion_hist"][i] for w in windows) for i in range(len(first["champion_hist"]))]
    challenger_hist = [sum(w["challenger_hist"][i] for w in windows) for i in range(len(first["challenger_hist"]))]
    diff_mean = sum((w["score_diff_mean"] or 0) * w["compared"] for w in windows) / compared if compared else None
    from operators.experiments import population_stability_index
    return {
        "champion": first["champion"], "challenger": first["challenger"], "windows": len(windows),
        "compared": compared, "agreement": agreed / compared if compared else None,
        "flips": [{"champion": k[0], "challenger": k[1], "count": v} for k, v in sorted(flips.items())],
        "score_diff_mean": diff_mean,
        "score_diff_p99_max": max((w["score_diff_p99"] or 0) for w in windows),
        "bins": first["bins"], "champion_hist": champion_hist, "challenger_hist": challenger_hist,
        "psi": population_stability_index(champion_hist, challenger_hist) if compared else None,
    }


def render_html(windows: Sequence[dict[str, Any]], title: str) -> str:
    """The page: a summary table and four figures (agreement over time, the two score
    distributions, the flip matrix, batch latency per model)."""
    total = merge_windows(windows)
    figures = [
        _figure("Agreement over time", _agreement_svg(windows)),
        _figure("Score distributions", _histograms_svg(total)),
        _figure("Flip matrix", _flip_matrix_svg(total)),
        _figure("Latency per model", _latency_svg(windows)),
    ]
    rows = [("champion", total["champion"]), ("challenger", total["challenger"]),
            ("windows", total["windows"]), ("events compared", f"{total['compared']:,}"),
            ("label agreement", _fmt(total["agreement"], ".4f")),
            ("|score difference| mean", _fmt(total["score_diff_mean"], ".4f")),
            ("|score difference| p99 (worst window)", _fmt(total["score_diff_p99_max"], ".4f")),
            ("PSI (challenger vs champion)", _fmt(total["psi"], ".4f"))]
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table.summary {{ border-collapse: collapse; margin-bottom: 1.5em; }}
table.summary th, table.summary td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
figure {{ display: inline-block; margin: 0 1em 1.5em 0; vertical-align: top; }}
figcaption {{ font-weight: 600; margin-bottom: 4px; }}
svg text {{ font-size: 11px; fill: #333; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
<table class="summary">{table}</table>
{''.join(figures)}
</body></html>
"""


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _figure(caption: str, svg: str) -> str:
    return f'<figure><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>'


def _svg(body: str, width: int = WIDTH, height: int = HEIGHT, label: str = "") -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(label)}">'
            f'<rect width="{width}" height="{height}" fill="#fff" stroke="#ddd"/>{body}</svg>')


def _axes(y_max: float, y_label: str, y_min: float = 0.0) -> str:
    x0, y0, x1, y1 = PAD, HEIGHT - PAD, WIDTH - 10, 20
    ticks = "".join(
        f'<line x1="{x0 - 4}" y1="{y0 - (y0 - y1) * f:.1f}" x2="{x0}" y2="{y0 - (y0 - y1) * f:.1f}" stroke="#555"/>'
        f'<text x="{x0 - 6}" y="{y0 - (y0 - y1) * f + 4:.1f}" text-anchor="end">{y_min + (y_max - y_min) * f:.3g}</text>'
        for f in (0, 0.5, 1))
    return (f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#555"/>'
            f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#555"/>{ticks}'
            f'<text x="12" y="{(y0 + y1) / 2}" transform="rotate(-90 12 {(y0 + y1) / 2})" '
            f'text-anchor="middle">{html.escape(y_label)}</text>')


def _agreement_svg(windows: Sequence[dict[str, Any]]) -> str:
    points = [(w["window_start_ms"], w["agreement"]) for w in windows if w.get("agreement") is not None]
    if not points:
        return _svg('<text x="50%" y="50%" text-anchor="middle">no events compared</text>', label="agreement")
    t0, t1 = points[0][0], max(points[-1][0], points[0][0] + 1)
    lo = min(min(a for _, a in points), 0.9)
    x = lambda t: PAD + (WIDTH - 10 - PAD) * (t - t0) / (t1 - t0)                      # noqa: E731
    y = lambda a: HEIGHT - PAD - (HEIGHT - PAD - 20) * (a - lo) / (1 - lo or 1)          # noqa: E731
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(a):.1f}" for i, (t, a) in enumerate(points))
    dots = "".join(f'<circle cx="{x(t):.1f}" cy="{y(a):.1f}" r="2.5" fill="#1f77b4"/>' for t, a in points)
    span_s = (t1 - t0) / 1000
    labels = (f'<text x="{PAD}" y="{HEIGHT - PAD + 16}">0 s</text>'
              f'<text x="{WIDTH - 10}" y="{HEIGHT - PAD + 16}" text-anchor="end">{span_s:.0f} s</text>')
    return _svg(f'{_axes(1.0, "label agreement", lo)}{labels}'
                f'<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>{dots}', label="agreement")


def _histograms_svg(total: dict[str, Any]) -> str:
    a, b, bins = total["champion_hist"], total["challenger_hist"], total["bins"]
    sa, sb = sum(a) or 1, sum(b) or 1
    shares = [(x / sa, y / sb) for x, y in zip(a, b)]
    top = max([max(p) for p in shares] + [1e-9])
    n = len(shares)
    slot = (WIDTH - 10 - PAD) / n
    bars = []
    for i, (pa_, pb) in enumerate(shares):
        for j, (share, colour) in enumerate(((pa_, "#1f77b4"), (pb, "#ff7f0e"))):
            h = (HEIGHT - PAD - 20) * share / top
            bars.append(f'<rect x="{PAD + i * slot + j * slot / 2:.1f}" y="{HEIGHT - PAD - h:.1f}" '
                        f'width="{slot / 2 - 1:.1f}" height="{h:.1f}" fill="{colour}"/>')
    legend = (f'<rect x="{WIDTH - 170}" y="14" width="10" height="10" fill="#1f77b4"/>'
              f'<text x="{WIDTH - 155}" y="23">champion {html.escape(total["champion"])}</text>'
              f'<rect x="{WIDTH - 170}" y="30" width="10" height="10" fill="#ff7f0e"/>'
              f'<text x="{WIDTH - 155}" y="39">challenger {html.escape(total["challenger"])}</text>'
              f'<text x="{PAD}" y="{HEIGHT - PAD + 16}">{bins[0]:g}</text>'
              f'<text x="{WIDTH - 10}" y="{HEIGHT - PAD + 16}" text-anchor="end">score {bins[-1]:g}</text>')
    return _svg(_axes(top, "share of events") + "".join(bars) + legend, label="score distributions")


def _flip_matrix_svg(total: dict[str, Any]) -> str:
    labels = sorted({f["champion"] for f in total["flips"]} | {f["challenger"] for f in total["flips"]})
    counts = {(f["champion"], f["challenger"]): f["count"] for f in total["flips"]}
    n = max(len(labels), 1)
    cell = min(60, (HEIGHT - 60) / n)
    top = max(counts.values(), default=1)
    cells = []
    for i, row in enumerate(labels):
        cells.append(f'<text x="{PAD + 70}" y="{50 + i * cell + cell / 2 + 4:.1f}" text-anchor="end">'
                     f'{html.escape(row)}</text>')
        for j, col in enumerate(labels):
            c = counts.get((row, col), 0)
            shade = 245 - int(180 * c / top)
            cells.append(f'<rect x="{PAD + 80 + j * cell:.1f}" y="{50 + i * cell:.1f}" width="{cell - 2:.1f}" '
                         f'height="{cell - 2:.1f}" fill="rgb({shade},{shade},255)"/>'
                         f'<text x="{PAD + 80 + j * cell + cell / 2:.1f}" y="{50 + i * cell + cell / 2 + 4:.1f}" '
                         f'text-anchor="middle" style="fill:{"#fff" if shade < 150 else "#222"}">{c:,}</text>')
    heads = "".join(f'<text x="{PAD + 80 + j * cell + cell / 2:.1f}" y="44" text-anchor="middle">'
                    f'{html.escape(col)}</text>' for j, col in enumerate(labels))
    axis = (f'<text x="{PAD + 80}" y="24">challenger label →</text>'
            f'<text x="14" y="{50 + n * cell / 2}" transform="rotate(-90 14 {50 + n * cell / 2})" '
            f'text-anchor="middle">champion label</text>')
    return _svg(axis + heads + "".join(cells), label="flip matrix")


def _latency_svg(windows: Sequence[dict[str, Any]]) -> str:
    champion = [w["champion_batch_ms_p50"] for w in windows if w.get("champion_batch_ms_p50") is not None]
    challenger = [w["challenger_batch_ms_p50"] for w in windows if w.get("challenger_batch_ms_p50") is not None]
    series = [("champion", _median(champion), "#1f77b4"), ("challenger", _median(challenger), "#ff7f0e")]
    top = max([v for _, v, _ in series if v is not None] + [1e-9])
    bars = []
    for i, (name, value, colour) in enumerate(series):
        if value is None:
            continue
        h = (HEIGHT - PAD - 20) * value / top
        x = PAD + 60 + i * 200
        bars.append(f'<rect x="{x}" y="{HEIGHT - PAD - h:.1f}" width="120" height="{h:.1f}" fill="{colour}"/>'
                    f'<text x="{x + 60}" y="{HEIGHT - PAD + 16}" text-anchor="middle">{name}</text>'
                    f'<text x="{x + 60}" y="{HEIGHT - PAD - h - 4:.1f}" text-anchor="middle">{value:.2f} ms</text>')
    return _svg(_axes(top, "batch scoring ms, p50") + "".join(bars), label="latency")


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
