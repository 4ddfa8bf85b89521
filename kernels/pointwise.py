"""Each cell's pointwise step and its derivative, written once.

These are plain scalar Python functions of one hidden unit. :func:`build`
compiles the same source for a target: ``njit(inline="always")`` for the CPU
time loops (:mod:`fastrnn.kernels.cpu`) and ``cuda.jit(device=True)`` for the
GPU kernels (:mod:`fastrnn.kernels.cuda`), each with its own ``tanh`` and
``sigmoid``. The pre-activations passed in already include both biases and
the input and recurrent products (``a = W x + b_ih + U h + b_hh``, per gate).

Constants are written ``type(x)(1)``, never a bare ``1``: Numba types
``1 - x`` for a float32 ``x`` as float64, which would run every float32
kernel at double precision (half the SIMD width) and promote its results.
``test_pointwise_keeps_float32`` pins this.

Numba's on-disk cache (``cache=True`` in :mod:`fastrnn.kernels.cpu`) keys
each kernel on its own file only: after editing this file in a source
checkout, delete ``kernels/__pycache__/*.nb[ic]`` (an install rewrites every
file, which invalidates the cache by itself).

Derivatives take the saved *activations* (σ' = s (1 - s), tanh' = 1 - t²),
never recomputing a transcendental function, so backward is exact with
respect to what forward produced.

For the peephole LSTM the peephole terms are added to the pre-activations by
the caller (``p_i * c`` for "diagonal", ``(P_i c)_j`` for "full"); the step is
split in two because ``o`` sees the *new* cell ``c'``, which for "full" needs
every unit's ``c'`` first.
"""
from types import SimpleNamespace


def build(jit, tanh, sigmoid):
    """Compile every pointwise function with ``jit`` using ``tanh``/``sigmoid``.

    ``jit`` is a decorator (e.g. ``numba.njit(inline="always")`` or
    ``numba.cuda.jit(device=True)``); ``tanh`` and ``sigmoid`` must already be
    compiled for that target. Returns a namespace of compiled functions.
    """

    # ---------------------------------------------------------------- RNN
    @jit
    def rnn_tanh_step(a):
        """h' = tanh(a)"""
        return tanh(a)

    @jit
    def rnn_tanh_grad(h_new, dh):
        """da = dh * (1 - h'^2)"""
        return dh * (type(h_new)(1) - h_new * h_new)

    @jit
    def rnn_relu_step(a):
        """h' = max(a, 0)"""
        return a if a > 0 else type(a)(0)

    @jit
    def rnn_relu_grad(h_new, dh):
        """da = dh * [h' > 0]"""
        return dh if h_new > 0 else type(dh)(0)

    # ---------------------------------------------------------------- LSTM
    @jit
    def lstm_step(ai, af, ag, ao, c_prev):
        """i,f,g,o = σ(ai),σ(af),tanh(ag),σ(ao); c' = f c + i g; h' = o tanh(c').

        Returns (i, f, g, o, c', tanh(c'), h')."""
        i = sigmoid(ai)
        f = sigmoid(af)
        g = tanh(ag)
        o = sigmoid(ao)
        c = f * c_prev + i * g
        tc = tanh(c)
        return i, f, g, o, c, tc, o * tc

    @jit
    def lstm_grad(i, f, g, o, tc, c_prev, dh, dc_next):
        """Back through one LSTM step.

        ``dh`` is dL/dh' (output plus carried), ``dc_next`` dL/dc' carried.
        Returns (dai, daf, dag, dao, dc_prev)."""
        one = type(i)(1)
        dc = dc_next + dh * o * (one - tc * tc)
        dao = dh * tc * o * (one - o)
        dai = dc * g * i * (one - i)
        daf = dc * c_prev * f * (one - f)
        dag = dc * i * (one - g * g)
        return dai, daf, dag, dao, dc * f

    # ---------------------------------------------------------------- GRU
    @jit
    def gru_step(ar, az, an_x, an_h, h_prev):
        """reset_after=True: r=σ(ar), z=σ(az), n=tanh(an_x + r an_h), h'=(1-z) n + z h.

        ``an_x = W_n x + b_in``, ``an_h = U_n h + b_hn``. Returns (r, z, n, h')."""
        r = sigmoid(ar)
        z = sigmoid(az)
        n = tanh(an_x + r * an_h)
        return r, z, n, (type(z)(1) - z) * n + z * h_prev

    @jit
    def gru_grad(r, z, n, an_h, h_prev, dh):
        """Back through one reset_after=True GRU step.

        Returns (dar, daz, dan_x, dan_h, dh_prev_direct) where ``dan_x`` is
        the gradient of ``W_n x + b_in`` and ``dan_h`` of ``U_n h + b_hn``;
        ``dh_prev_direct`` is the part that does not pass through ``U``."""
        one = type(z)(1)
        dn = dh * (one - z) * (one - n * n)
        daz = dh * (h_prev - n) * z * (one - z)
        dar = dn * an_h * r * (one - r)
        return dar, daz, dn, dn * r, dh * z

    @jit
    def gru_reset_before_gates(ar, az):
        """reset_after=False, first half: r = σ(ar), z = σ(az). Returns (r, z)."""
        return sigmoid(ar), sigmoid(az)

    @jit
    def gru_reset_before_step(an, z, h_prev):
        """reset_after=False, second half: n = tanh(an), h' = (1-z) n + z h,
        where ``an = W_n x + b_in + U_n (r h) + b_hn``. Returns (n, h')."""
        n = tanh(an)
        return n, (type(z)(1) - z) * n + z * h_prev

    @jit
    def gru_reset_before_grad_n(z, n, h_prev, dh):
        """Returns (dan, daz, dh_prev_direct) for the second half."""
        one = type(z)(1)
        return dh * (one - z) * (one - n * n), dh * (h_prev - n) * z * (one - z), dh * z

    @jit
    def gru_reset_before_grad_r(r, h_prev, drh):
        """``drh`` = dL/d(r h) (from ``U_nᵀ dan``). Returns (dar, dh_prev_part)."""
        return drh * h_prev * r * (type(r)(1) - r), drh * r

    # ---------------------------------------------------------------- peephole LSTM
    @jit
    def peephole_cell(ai, af, ag, c_prev):
        """i = σ(ai), f = σ(af), g = tanh(ag), c' = f c + i g, with ``ai``/``af``
        already including the peephole terms on ``c``. Returns (i, f, g, c')."""
        i = sigmoid(ai)
        f = sigmoid(af)
        g = tanh(ag)
        return i, f, g, f * c_prev + i * g

    @jit
    def peephole_out(ao, c):
        """o = σ(ao) with ``ao`` including the peephole term on ``c'``;
        h' = o tanh(c'). Returns (o, tanh(c'), h')."""
        o = sigmoid(ao)
        tc = tanh(c)
        return o, tc, o * tc

    @jit
    def peephole_grad_out(o, tc, dh):
        """Returns (dao, dc_from_h): gradient of ``ao`` and of c' through h'."""
        one = type(o)(1)
        return dh * tc * o * (one - o), dh * o * (one - tc * tc)

    @jit
    def peephole_grad_cell(i, f, g, c_prev, dc):
        """``dc`` = total dL/dc' (carried + through h' + through the o peephole).
        Returns (dai, daf, dag, dc_prev_direct) (peephole parts of dc_prev are
        added by the caller)."""
        one = type(i)(1)
        return dc * g * i * (one - i), dc * c_prev * f * (one - f), dc * i * (one - g * g), dc * f

    return SimpleNamespace(**{k: v for k, v in locals().items()
                              if k not in ("jit", "tanh", "sigmoid")})


def build_python():
    """The pointwise functions as plain Python on scalars (for tests)."""
    import math

    def sigmoid(x):
        return 1.0 / (1.0 + math.exp(-x))

    return build(lambda f: f, math.tanh, sigmoid)
