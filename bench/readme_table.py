"""Print the README's benchmark tables (Markdown) from a ``fastrnn bench --json`` file.

    python bench/readme_table.py bench/results/cpu.json
"""
import json
import sys
from collections import defaultdict


def main(path):
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


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/cpu.json")
