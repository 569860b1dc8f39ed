#!/usr/bin/env python3
"""README's benchmark tables and chart, from the herd's JSON lines in this directory.

Each `*-runs.jsonl` file is one sequence: rounds (`run`) of a scenario's configurations (`mode`,
or `system` and `callers` for the stampede), run side by side. A figure is the median over the
rounds, with its range; a ratio is the median of the per-round ratios to the scenario's baseline,
so that a slow moment of the shared machine moves both sides of a ratio alike.

    python3 examples/bench/report.py            # prints the tables, writes chart.svg
"""
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rows(name):
    path = HERE / name
    if not path.exists():
        sys.exit(f"{path} is missing: run the sequence that writes it (BENCHMARKS.md)")
    return [json.loads(line) for line in path.open() if line.strip()]


def by_round(lines, label):
    rounds = {}
    for r in lines:
        rounds.setdefault(r["run"], {})[label(r)] = r
    return [rounds[k] for k in sorted(rounds)]


def spread(values, fmt="{:,.0f}"):
    values = list(values)
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    if lo == hi:
        return fmt.format(med) + (" in every round" if len(values) > 1 else "")
    return f"{fmt.format(med)} [{fmt.format(lo)}..{fmt.format(hi)}]"


def ratios(rounds, field, top, bottom):
    return [r[top][field] / r[bottom][field] for r in rounds]


def table(title, header, body):
    print(f"\n**{title}**\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in body:
        print("| " + " | ".join(line) + " |")


def main():
    bars = []  # (scenario, configuration, median ratio, low, high)
    n_rounds = lambda rounds: f"{len(rounds)} rounds"

    # The stampede: distcache against get/compute/set by hand.
    stampede = rows("stampede-runs.jsonl")
    cols, lines = [], {"runs": [], "cold": [], "warm": [], "failed": []}
    for callers in (32, 128):
        rounds = by_round([r for r in stampede if r["callers"] == callers], lambda r: r["system"])
        rs = ratios(rounds, "warm_ops_per_s", "distcache", "naive")
        bars.append((f"stampede 4×{callers}", "distcache / by hand", statistics.median(rs), min(rs), max(rs)))
        for system in ("distcache", "naive"):
            sel = [r[system] for r in rounds]
            cols.append(f"{'distcache' if system == 'distcache' else 'by hand'} 4 × {callers}")
            lines["runs"].append(spread(r["getter_calls"] for r in sel))
            lines["cold"].append(spread((r["cold_wall_s"] for r in sel), "{:.3f}"))
            lines["warm"].append(spread((r["warm_ops_per_s"] for r in sel), "{:,.0f}"))
            lines["failed"].append(spread(r["failed_calls"] for r in sel))
        lines["warm"][-2] += f", {spread(rs, '{:.2f}×')}"
    table(
        f"The stampede: 4 processes, 200 keys, a 20 ms getter; by hand: get, compute, set ({n_rounds(rounds)})",
        [""] + cols,
        [
            ["getter runs (once per key: 200)"] + lines["runs"],
            ["cold stampede, s"] + lines["cold"],
            ["warm gets/s"] + lines["warm"],
            ["failed calls"] + lines["failed"],
        ],
    )

    # Hot keys: the near cache.
    near = by_round(rows("near-runs.jsonl"), lambda r: r["mode"])
    gets = ratios(near, "warm_ops_per_s", "near", "off")
    hottest = ratios(near, "hottest_node_gets", "off", "near")
    bars.append(("hot keys", "near_ttl 1 s / without", statistics.median(gets), min(gets), max(gets)))
    column = lambda mode, field, fmt="{:,.0f}": spread((r[mode][field] for r in near), fmt)
    table(
        f"Hot keys: Zipf 1.1 over 10,000 keys, 4 × 32, a 5 s warm phase ({n_rounds(near)})",
        ["", "without a near cache", "`near_ttl` 1 s"],
        [
            ["warm gets/s", column("off", "warm_ops_per_s"), column("near", "warm_ops_per_s") + f", {spread(gets, '{:.2f}×')}"],
            ["gets on the hottest memcached node", column("off", "hottest_node_gets"), column("near", "hottest_node_gets") + f", {spread(hottest, '{:.1f}×')} fewer"],
            ["warm p99, ms", column("off", "warm_p99_ms", "{:.2f}"), column("near", "warm_p99_ms", "{:.2f}")],
            ["failed calls, wrong values", spread(r["off"]["failed_calls"] + r["off"]["wrong_values"] for r in near), spread(r["near"]["failed_calls"] + r["near"]["wrong_values"] for r in near)],
        ],
    )

    # When the origin fails.
    outage = by_round(rows("outage-runs.jsonl"), lambda r: r["mode"])
    modes = [("stale", "`stale_if_error` 1 h, `error_backoff` 1 s"), ("plain", "`error_backoff` 1 s"), ("soft", "`stale_if_error`, `soft_timeout` 100 ms, a 2 s origin")]
    failed = lambda r, m: r[m]["failed_calls"] - (r[m]["origin_errors"] + r[m]["backoff_errors"] if m == "plain" else 0)
    table(
        f"The origin down for 10 s (in the third column, slow instead): 4 × 32, 200 keys, expire 2 s ({n_rounds(outage)})",
        [""] + [name for _, name in modes],
        [
            ["failed calls (without stale values: besides the getter's error and `Error::Backoff`)"] + [spread(failed(r, m) for r in outage) for m, _ in modes],
            ["origin calls per key while down, most"] + [spread(r[m]["origin_calls_down_max_per_key"] for r in outage) for m, _ in modes],
            ["p99 while down − p99 while up, ms"] + [spread((r[m]["warm_down_p99_ms"] - r[m]["warm_up_p99_ms"] for r in outage), "{:+.3f}") for m, _ in modes],
        ],
    )

    # TLS, authentication and signing.
    sec = by_round(rows("security-runs.jsonl"), lambda r: r["mode"])
    table(
        f"TLS with a login, and signed values: 4 × 32, 200 keys, 1 KB values ({n_rounds(sec)})",
        ["ratio to plain TCP", "TLS + login", "signed"],
        [
            ["warm gets/s", *(spread(ratios(sec, "warm_ops_per_s", m, "plain"), "{:.2f}×") for m in ("tls", "signed"))],
            ["cold stampede wall", *(spread(ratios(sec, "cold_wall_s", m, "plain"), "{:.2f}×") for m in ("tls", "signed"))],
            ["duplicate runs and failed calls", *(spread(r[m]["getter_calls"] - r[m]["keys"] + r[m]["failed_calls"] for r in sec) for m in ("tls", "signed"))],
        ],
    )
    for m, name in (("tls", "TLS + login / plain"), ("signed", "signed / plain")):
        rs = ratios(sec, "warm_ops_per_s", m, "plain")
        bars.append(("security", name, statistics.median(rs), min(rs), max(rs)))

    # Big values: chunked and compressed, against plain gets of the same bytes by hand.
    big = by_round(rows("big-runs.jsonl"), lambda r: r["mode"])
    rs = ratios(big, "warm_ops_per_s", "distcache", "naive")
    bars.append(("5 MB values", "distcache / plain gets by hand", statistics.median(rs), min(rs), max(rs)))
    modes = [("distcache", "distcache, random"), ("naive", "by hand: 1 MB parts, plain gets"), ("compressible", "distcache, compressible")]
    column = lambda field, fmt="{:,.0f}": [spread((r[m][field] for r in big), fmt) for m, _ in modes]
    warm = column("warm_ops_per_s")
    warm[0] += f", {spread(rs, '{:.2f}×')}"
    table(
        f"Big values: 20 keys of 5 MB (random: 3.7 MB compressed), 4 × 32, a 20 ms getter, 5 s warm ({n_rounds(big)})",
        [""] + [name for _, name in modes],
        [
            ["getter runs (once per key: 20)"] + column("getter_calls"),
            ["warm gets/s"] + warm,
            ["warm p99, ms"] + column("warm_p99_ms", "{:.0f}"),
            ["failed calls"] + column("failed_calls"),
        ],
    )

    (HERE / "chart.svg").write_text(chart(bars))
    print(f"\nwrote {HERE / 'chart.svg'}", file=sys.stderr)


def chart(bars):
    """Horizontal bars of ratios on a log scale, 1× marked, whiskers for the range."""
    import math

    width, left, right, row, top = 820, 300, 40, 34, 50
    height = top + row * len(bars) + 40
    lo_x, hi_x = 0.25, 16.0
    span = width - left - right

    def x(v):
        return left + span * (math.log(v) - math.log(lo_x)) / (math.log(hi_x) - math.log(lo_x))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-weight="bold">Warm gets/s, relative to each scenario\'s baseline</text>',
        f'<text x="{left}" y="40" fill="#555">median of the per-round ratios; whiskers: the range over the rounds</text>',
    ]
    for tick in (0.25, 0.5, 1, 2, 4, 8, 16):
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{height - 30}" stroke="{"#333" if tick == 1 else "#ddd"}"/>')
        out.append(f'<text x="{tx:.1f}" y="{height - 12}" text-anchor="middle" fill="#555">{tick:g}×</text>')
    for i, (scenario, name, med, lo, hi) in enumerate(bars):
        y = top + i * row + 6
        colour = "#2b7bb9" if med >= 1 else "#d08a2b"
        x0, x1 = sorted((x(1), x(med)))
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{scenario}: {name}</text>')
        out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="20" fill="{colour}"/>')
        out.append(f'<line x1="{x(lo):.1f}" y1="{y + 10}" x2="{x(hi):.1f}" y2="{y + 10}" stroke="#222"/>')
        for w in (lo, hi):
            out.append(f'<line x1="{x(w):.1f}" y1="{y + 4}" x2="{x(w):.1f}" y2="{y + 16}" stroke="#222"/>')
        label_x = x(max(med, hi, 1)) + 6
        out.append(f'<text x="{label_x:.1f}" y="{y + 15}">{med:.2f}×</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
