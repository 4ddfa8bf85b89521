"""The README's benchmark tables (Markdown) from a ``fastrnn bench --json`` file.

Owns the Markdown the README shows: the cell grid with its speed-ups and the
summary (:func:`main`), and the ``--busy`` load-test table (:func:`busy`).
The script ``bench/readme_table.py`` runs :func:`cli`::

    python bench/readme_table.py bench/results/cpu.json
    python bench/readme_table.py --busy bench/results/busy.json   # the load-test table
"""
import json
import sys
from collections import defaultdict


def main(path):
    """The grid table and the summary table of a ``fastrnn bench --json`` file."""
    d = json.load(open(path))
    best = defaultdict(dict)            # (cell, shape, mode) -> impl -> seconds (best threads)
    gf = {}
    for r in d["records"]:
        key = (r["cell"], tuple(r["shape"]), r["mode"])
        t = r["median_s"]
        if r["impl"] not in best[key] or t < best[key][r["impl"]]:
            best[key][r["impl"]] = t
        if r["impl"] == "cpu":
            gf[key] = (r["gflops"], r["peak_fraction"])
    print("| cell | (T, B, I, H) | train: cpu ms | vs torch | vs numpy | infer: cpu ms "
          "| vs torch | vs ort | vs numpy | infer GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    cells = []
    for (cell, shape, mode) in best:
        if cell not in cells:
            cells.append(cell)

    def ratio(b, peer):
        return f"{b[peer] / b['cpu']:.2f}x" if peer in b else "–"
    for cell in cells:
        shapes = sorted({k[1] for k in best if k[0] == cell}, key=lambda s: s[1] * s[3])
        for sh in shapes:
            tr, inf = best[(cell, sh, "train")], best[(cell, sh, "infer")]
            print(f"| {cell} | {','.join(map(str, sh))} | {tr['cpu'] * 1e3:.3g} | "
                  f"{ratio(tr, 'torch')} | {ratio(tr, 'numpy')} | {inf['cpu'] * 1e3:.3g} | "
                  f"{ratio(inf, 'torch')} | {ratio(inf, 'ort')} | {ratio(inf, 'numpy')} | "
                  f"{gf[(cell, sh, 'infer')][0]:.0f} |")
    print()
    print("| cell | mode | vs | geomean | min (at) |")
    print("|---|---|---|---:|---|")
    for s in d["meta"]["summary"]:
        print(f"| {s['cell']} | {s['mode']} | {s['versus']} | {s['geomean']:.2f}x | "
              f"{s['min']:.2f}x ({','.join(map(str, s['min_shape']))}) |")


def busy(path):
    """The ``--busy`` table: each library's default under load against its own quiet
    one-thread time, fastrnn and torch side by side."""
    rows = defaultdict(dict)        # (cell, shape, mode) -> impl -> record
    for r in json.load(open(path)).get("busy", []):
        rows[(r["cell"], tuple(r["shape"]), r["mode"])][r["impl"]] = r
    print("| cell | (T, B, I, H) | mode | fastrnn quiet 1T ms | busy, default | slower "
          "| torch quiet 1T ms | busy, default | slower |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    worst = {}
    for (cell, shape, mode), by in rows.items():
        cols = []
        for impl in ("cpu", "torch"):
            r = by.get(impl)
            if r is None:
                cols += ["–"] * 3
                continue
            cols += [f"{r['quiet_1thread_s'] * 1e3:.3f}", f"{r['busy_default_s'] * 1e3:.3f}",
                     f"{r['slowdown']:.2f}x"]
            lo, hi = worst.get(impl, (r["slowdown"], r["slowdown"]))
            worst[impl] = (min(lo, r["slowdown"]), max(hi, r["slowdown"]))
        print(f"| {cell} | {','.join(map(str, shape))} | {mode} | " + " | ".join(cols) + " |")
    print()
    for impl, (lo, hi) in worst.items():
        print(f"{impl}: {lo:.2f}x to {hi:.2f}x of its quiet one-thread time")


def cli(argv=None):
    """``python bench/readme_table.py [--busy] [PATH]`` (defaults:
    ``bench/results/cpu.json``, with ``--busy`` ``bench/results/busy.json``)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 0 and argv[0] == "--busy":
        busy(argv[1] if len(argv) > 1 else "bench/results/busy.json")
    else:
        main(argv[0] if len(argv) > 0 else "bench/results/cpu.json")
