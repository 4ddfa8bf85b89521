"""The route of a layer's input through fastrnn: which modules ``x`` enters
between the layer and the compiled kernels, and which it enters twice.

    python bench/route_hops.py [--cell lstm] [--eval] [--dtype float32] [--functional]

Runs ``fastrnn.LSTM(16, 32)(x)`` (``--cell``: any layer of the registry;
``--functional``: ``fastrnn.functional.lstm`` and the others) on ``x``
``(20, 4, 16)`` once to compile, then again under ``sys.setprofile``.
Every Python call whose frame's locals hold ``x`` (the very object, a view of
it, or a copy or cast of it: an array of its values) is recorded with its
module; a call whose caller is in another module is a *hop* into the callee's
module. The hops, in call order, are the route; a module hopped into more than
once is *entered twice* (e.g. a second check of the same input, or a second
routing decision). Calls inside one module, and returns, are not hops. The
route ends at the kernels: a compiled call, or the threads' launcher
(:data:`LAUNCHERS`), whose callbacks belong to the kernel call.

Prints the route (``caller -> callee  function``), the hop count and the
modules entered more than once; ``tests/test_route.py`` asserts that none is.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


#: the modules that launch compiled kernels on the threads: the route ends there
#: (what they call back, e.g. a driver's function building a kernel's argument
#: tuple, is part of the kernel call)
LAUNCHERS = ("fastrnn.kernels.plan", "fastrnn.kernels.worker")


def _short(module):
    return module[len("fastrnn."):] if module.startswith("fastrnn.") else module


class _Tracer:
    """Records the calls whose arguments or free variables hold ``x``'s data."""

    def __init__(self, x):
        self.x = x
        self.xt = np.ascontiguousarray(x.transpose(1, 0, 2))
        self.ids = {id(x)}
        self.keep = [x]             # keeps the tracked arrays alive (stable ids)
        self.calls = []             # (caller module, callee module, function)
        self.walk = []              # where x is, calls and returns (see route)
        self.frames = set()         # ids of the frames recorded

    def _derived(self, v):
        if not isinstance(v, np.ndarray):
            return False
        a = v
        while isinstance(a, np.ndarray):
            if id(a) in self.ids:
                return True
            a = a.base
        x = self.x
        if v.size != x.size or v.dtype.kind != "f":
            return False
        same = ((v.shape == x.shape and np.array_equal(v, x))
                or (v.shape == self.xt.shape and np.array_equal(v, self.xt)))
        if same:                    # a copy or cast of x: follow it from now on
            self.ids.add(id(v))
            self.keep.append(v)
        return same

    def __call__(self, frame, event, arg):
        if event == "return":
            if id(frame) in self.frames:
                self.frames.discard(id(frame))
                back = frame.f_back
                if back is not None:
                    self._step(back.f_globals.get("__name__", ""))
            return
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("fastrnn"):
            return
        if not any(self._derived(v) for v in list(frame.f_locals.values())):
            return
        back = frame.f_back
        caller = back.f_globals.get("__name__", "") if back is not None else ""
        f = back
        while f is not None:        # below the launcher: the kernel call itself
            if f.f_globals.get("__name__", "") in LAUNCHERS:
                return
            f = f.f_back
        self.calls.append((caller, module, frame.f_code.co_name))
        self.frames.add(id(frame))
        self._step(module)

    def _step(self, module):
        if module.startswith("fastrnn") and (not self.walk or self.walk[-1] != module):
            self.walk.append(module)


def route(cell="lstm", training=True, dtype=np.float32, I=16, H=32, T=20, B=4,
          api="layer"):
    """``(hops, twice, walk)`` of one layer call: ``hops`` the list of ``(caller,
    callee, function)`` module hops (module names without the ``fastrnn.``
    prefix) from the layer's ``forward`` on, ``twice`` the modules hopped into
    more than once, ``walk`` the modules ``x`` passes through, returns included
    (the way issue 24 counted: a module left for a check and returned to
    appears again). ``api="functional"`` traces the functional API's call of
    the cell (``fastrnn.functional.lstm`` and the others) instead of a layer."""
    call = _functional_call if api == "functional" else _layer_call
    run, x, top = call(cell, training, np.dtype(dtype), I, H, T, B)
    run()                           # compile and warm up, untraced
    tracer = _Tracer(x)
    sys.setprofile(tracer)
    try:
        run()
    finally:
        sys.setprofile(None)
    hops = []
    for caller, callee, fn in tracer.calls:
        if caller != callee and hops or (not hops and callee == top):
            hops.append((_short(caller), _short(callee), fn))
    entered = [callee for _, callee, _ in hops[1:]]
    twice = sorted({m for m in entered if entered.count(m) > 1} | (
        {hops[0][1]} if hops and hops[0][1] in entered else set()))
    return hops, twice, [_short(m) for m in tracer.walk]


def _layer_call(cell, training, dtype, I, H, T, B):
    import fastrnn
    from fastrnn.cells import CELLS
    cls, options = CELLS[cell].layer
    layer = getattr(fastrnn, cls)(I, H, dtype=dtype, seed=0, **dict(options))
    layer.train(training)
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(dtype)
    return (lambda: layer(x)), x, "fastrnn.layers"


def _functional_call(cell, training, dtype, I, H, T, B):
    from fastrnn import functional as F
    from fastrnn.cells import CELLS
    spec = CELLS[cell]
    rng = np.random.default_rng(1)
    w = [(rng.standard_normal(s) * 0.3).astype(dtype)
         for s in ((spec.gates * H, I), (spec.gates * H, H), (spec.gates * H,),
                   (spec.gates * H,))]
    x = rng.standard_normal((T, B, I)).astype(dtype)
    kw = dict(training=training)
    if spec.family == "rnn":
        fn, kw["nonlinearity"] = F.rnn, spec.name[len("rnn_"):]
    elif spec.family == "gru":
        fn, kw["reset_after"] = F.gru, spec.name == "gru"
    elif spec.peephole is not None:
        fn = F.peephole_lstm
        kw["peephole"] = (rng.standard_normal((3,) + spec.peephole_shape(H)) * 0.3).astype(dtype)
    else:
        fn = F.lstm
    return (lambda: fn(x, *w, **kw)), x, "fastrnn.functional"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default="lstm", help="a registry cell name (default lstm)")
    p.add_argument("--eval", action="store_true", help="eval mode (default: training)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--functional", action="store_true",
                   help="trace fastrnn.functional's call of the cell instead of a layer")
    a = p.parse_args(argv)
    api = "functional" if a.functional else "layer"
    hops, twice, walk = route(a.cell, not a.eval, np.dtype(a.dtype), api=api)
    mode = "eval" if a.eval else "training"
    print(f"{a.cell} {mode} {a.dtype}: x (20, 4, 16), hidden 32, host, backend 'auto'")
    print(f"  {hops[0][1]}  {hops[0][2]}  (the {api} API)")
    for caller, callee, fn in hops[1:]:
        print(f"  {caller} -> {callee}  {fn}")
    print(f"hops: {len(hops) - 1}")
    print(f"modules entered more than once: {', '.join(twice) if twice else 'none'}")
    print(f"walk, returns included ({len(walk) - 1} steps): {' -> '.join(walk)}")
    return 1 if twice else 0


if __name__ == "__main__":
    sys.exit(main())
