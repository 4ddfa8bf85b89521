"""Same-process A/B of a layer's forward + backward: fastrnn/layers.py at a git
revision (A) against the working tree's (B), interleaved, same backend and weights.

    python bench/ab_layer_core.py --rev 5a476b6 [--rounds 200]

Prints, per shape, the median and minimum of A and B and the ratio A/B of the
medians (> 1: B is faster)."""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fastrnn
from fastrnn import layers as new_layers


def load_old(rev):
    src = subprocess.run(["git", "show", f"{rev}:fastrnn/layers.py"], check=True,
                         capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    path = Path(tempfile.mkdtemp()) / "layers_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("fastrnn._layers_ab_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rev", required=True)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--cells", default="LSTM,GRU")
    a = p.parse_args()
    old = load_old(a.rev)
    print(f"fastrnn threads {fastrnn.get_num_threads()}; A = layers.py at {a.rev}, "
          "B = working tree")
    for cls in a.cells.split(","):
        for T, B, I, H in ((200, 1, 32, 32), (100, 32, 64, 128)):
            la = getattr(old, cls)(I, H, seed=0)
            lb = getattr(new_layers, cls)(I, H, seed=0)
            lb.load_state_dict(la.state_dict())
            rng = np.random.default_rng(0)
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            dy = rng.standard_normal((T, B, H)).astype(np.float32)

            def step(layer):
                layer(x)
                layer.backward(dy)
            step(la)
            step(lb)
            ta, tb = [], []
            for _ in range(a.rounds):
                for layer, ts in ((la, ta), (lb, tb)):
                    t0 = time.perf_counter()
                    step(layer)
                    ts.append(1e3 * (time.perf_counter() - t0))
            ma, mb = statistics.median(ta), statistics.median(tb)
            print(f"{cls} {(T, B, I, H)}: A {ma:.3f} ms (min {min(ta):.3f}), "
                  f"B {mb:.3f} ms (min {min(tb):.3f}); A/B medians {ma / mb:.3f}, "
                  f"minima {min(ta) / min(tb):.3f}")


if __name__ == "__main__":
    main()
