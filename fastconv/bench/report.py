"""Turning measurements into the table, the JSON file, the plot, and a comparison of two runs."""

from __future__ import annotations

import json
import math

COLUMNS = [
    ("case", "case", "{}"),
    ("impl", "impl", "{}"),
    ("ways", "way", "{}"),
    ("fwd_ms", "fwd ms", "{:.2f}"),
    ("fwd_gflops", "GFLOP/s", "{:.1f}"),
    ("fwd_gbs", "GB/s", "{:.1f}"),
    ("fwd_roof_pct", "roof%", "{:.0f}"),
    ("fwd_vs_torch", "vs torch", "{:.2f}x"),
    ("both_ms", "fwd+bwd ms", "{:.2f}"),
    ("both_roof_pct", "roof%", "{:.0f}"),
    ("both_vs_torch", "vs torch", "{:.2f}x"),
    ("peak_mb", "peak MB", "{:.0f}"),
]


def row_for(case, impl, fwd_s, both_s, torch_fwd_s, torch_both_s, peak, itemsize, ceil):
    """One table row: times and the figures derived from them."""
    def floor(flops, nbytes):  # the roofline's lower bound on the time
        return max(flops / ceil["flops"], nbytes / ceil["bandwidth"])

    flops, nbytes = case.flops(), case.bytes(itemsize)
    both_flops = flops + case.backward_flops()
    both_bytes = case.bytes(itemsize, backward=True)
    row = {"case": case.name, "impl": impl, "mode": case.mode,
           "fwd_ms": fwd_s * 1e3 if fwd_s else None,
           "fwd_gflops": flops / fwd_s / 1e9 if fwd_s else None,
           "fwd_gbs": nbytes / fwd_s / 1e9 if fwd_s else None,
           "fwd_roof_pct": 100 * floor(flops, nbytes) / fwd_s if fwd_s else None,
           "fwd_vs_torch": torch_fwd_s / fwd_s if fwd_s and torch_fwd_s else None,
           "both_ms": both_s * 1e3 if both_s else None,
           "both_gflops": both_flops / both_s / 1e9 if both_s else None,
           "both_roof_pct": 100 * floor(both_flops, both_bytes) / both_s if both_s else None,
           "both_vs_torch": torch_both_s / both_s if both_s and torch_both_s else None,
           "peak_mb": peak / 2**20 if peak is not None else None}
    return row


def geomeans(rows):
    """Geometric mean of the ratios to PyTorch, per fastconv implementation."""
    out = {}
    for impl in sorted({r["impl"] for r in rows if r["impl"].startswith("fastconv")}):
        entry = {}
        for key in ("fwd_vs_torch", "both_vs_torch"):
            ratios = [r[key] for r in rows if r["impl"] == impl and r[key]]
            if ratios:
                entry[key] = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
                entry[key.replace("vs_torch", "worst")] = min(ratios)
        out[impl] = entry
    return out


def table(rows):
    """Fixed-width text table of the rows."""
    cells = [[title for _, title, _ in COLUMNS]]
    for r in rows:
        cells.append(["-" if r.get(key) is None else fmt.format(r[key])
                      for key, _, fmt in COLUMNS])
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if j < 3 else v.rjust(w)
                               for j, (v, w) in enumerate(zip(c, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(means):
    lines = []
    for impl, m in means.items():
        parts = []
        if "fwd_vs_torch" in m:
            parts.append(f"forward {m['fwd_vs_torch']:.2f}x (worst {m['fwd_worst']:.2f}x)")
        if "both_vs_torch" in m:
            parts.append(f"forward+backward {m['both_vs_torch']:.2f}x "
                         f"(worst {m['both_worst']:.2f}x)")
        if parts:
            lines.append(f"{impl} vs torch, geometric mean: " + ", ".join(parts))
    return "\n".join(lines)


def way_check(rows, slack=0.05):
    """Lines naming the cases whose chosen way ran more than ``slack`` slower than the fastest
    way measured for them (``--ways``), and a count of those within it."""
    checked = [r for r in rows if r.get("way_ms")]
    lines, within = [], 0
    for r in checked:
        times = {w: t for w, t in r["way_ms"].items() if w != "chosen"}
        best = min(times, key=times.get)
        if r["way_ms"]["chosen"] > (1 + slack) * times[best]:
            lines.append(f"  {r['case']}: chosen {r['ways']} {r['way_ms']['chosen']:.2f} ms, "
                         f"{best} {times[best]:.2f} ms")
        else:
            within += 1
    head = (f"way check: the chosen way within {100 * slack:.0f}% of the fastest measured in "
            f"{within} of {len(checked)} cases")
    return "\n".join([head + (", not in:" if lines else ""), *lines])


def save_json(path, meta, rows, means, startup=None):
    with open(path, "w") as fh:
        json.dump({"meta": meta, "results": rows, "geomean": means, "startup": startup}, fh,
                  indent=1)


def plot(path, rows):
    """Horizontal bars of PyTorch time / fastconv time per case (beyond 1: fastconv is
    faster), forward and forward+backward where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = sorted({r["impl"] for r in rows if r["impl"].startswith("fastconv")})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    series = [(impl, key) for impl in impls for key in ("fwd_vs_torch", "both_vs_torch")
              if any(r.get(key) for r in rows if r["impl"] == impl)]
    height = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(9, max(4, 0.3 * len(cases) * max(1, len(series) / 2))))
    for i, (impl, key) in enumerate(series):
        values = []
        for case in cases:
            match = [r[key] for r in rows if r["case"] == case and r["impl"] == impl]
            values.append(match[0] if match and match[0] else float("nan"))
        label = f"{impl} {'forward' if key.startswith('fwd') else 'forward+backward'}"
        ax.barh([c + i * height for c in range(len(cases))], values, height, label=label)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([c + height * (len(series) - 1) / 2 for c in range(len(cases))])
    ax.set_yticklabels(cases, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("PyTorch time / fastconv time")
    ax.set_title("fastconv vs PyTorch (beyond 1: fastconv faster)")
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.02))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(old_path, new_path):
    """A table of the changes between two saved runs, matched by case and implementation."""
    with open(old_path) as fh:
        old = {(r["case"], r["impl"]): r for r in json.load(fh)["results"]}
    with open(new_path) as fh:
        new = json.load(fh)["results"]
    pairs = [(r, old.get((r["case"], r["impl"]))) for r in new]
    pairs = [(r, o) for r, o in pairs if o is not None]
    wc = max([4] + [len(r["case"]) for r, _ in pairs])
    wi = max([4] + [len(r["impl"]) for r, _ in pairs])
    lines = [f"{'case':{wc}s} {'impl':{wi}s} {'fwd ms old':>11s} {'new':>9s} {'change':>8s} "
             f"{'fwd+bwd old':>12s} {'new':>9s} {'change':>8s}"]
    for r, o in pairs:
        cells = []
        for key, width in (("fwd_ms", 11), ("both_ms", 12)):
            if o[key] and r[key]:
                cells.append(f"{o[key]:{width}.2f} {r[key]:9.2f} "
                             f"{100 * (r[key] / o[key] - 1):+7.0f}%")
            else:
                cells.append(f"{'-':>{width}s} {'-':>9s} {'':>8s}")
        lines.append(f"{r['case']:{wc}s} {r['impl']:{wi}s} " + " ".join(cells))
    return "\n".join(lines)
