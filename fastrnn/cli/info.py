"""``fastrnn info``: versions, backends, threads, the CPU kernels and their
bfloat16 mode, the GPU and MPI, one line each."""
from __future__ import annotations

import os
import platform
import sys


def _version(mod):
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception:
        return None


def cmd_info(args):
    from .. import __version__
    from ..dispatch import BackendUnavailable, get_backend, resolve_backend
    print(f"fastrnn  {__version__}")
    print(f"python   {platform.python_version()} ({platform.platform()})")
    for mod in ("numpy", "numba", "scipy", "torch", "matplotlib"):
        v = _version(mod)
        print(f"{mod:<8} {v if v else 'not installed'}")
    print("backends:")
    for name in ("numpy", "cpu", "cuda"):
        try:
            get_backend(name)
            status = "available"
        except (BackendUnavailable, ImportError, Exception) as exc:   # noqa: BLE001
            status = f"unavailable ({' '.join(str(exc).split())})"     # the whole reason
        print(f"  {name:<6} {status}")
    print(f"  'auto' resolves to {resolve_backend('auto')!r} for host arrays")
    print(f"cpu cores {os.cpu_count()}")
    try:
        import numba
        print(f"numba threads {numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS} "
              f"(threading layer {numba.config.THREADING_LAYER})")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info
        # one line per kind of pool: two copies of one library (libgomp of the
        # system and of torch) are one line, with their thread counts
        kinds = {}
        for pool in threadpool_info():
            kinds.setdefault((pool.get("user_api"), pool.get("internal_api")), []).append(pool)
        for (api, internal), pools in kinds.items():
            threads = sorted({p.get("num_threads") for p in pools})
            copies = f", {len(pools)} copies loaded" if len(pools) > 1 else ""
            print(f"{api} threads {'/'.join(str(t) for t in threads)} ({internal}{copies})")
    except ImportError:
        pass
    try:
        from .. import get_num_threads
        print(f"fastrnn kernel BLAS threads (most) {get_num_threads()}")
        from ..kernels import cpu as _cpu
        print(f"cpu kernels: {_cpu.describe()}")
    except ImportError:
        pass
    print(_bf16_info())
    print(f"GPU: {_gpu_info()}")
    print(f"MPI: {_mpi_info()}")
    return 0


def _bf16_info():
    """One line on the bfloat16 compute mode: the CPU's bf16 instructions and,
    where the CPU kernels say it, which bf16 path runs."""
    from ..bf16 import has_amx_bf16, has_avx512_bf16
    yes = {True: "yes", False: "no"}
    line = (f"bfloat16: avx512_bf16 {yes[has_avx512_bf16()]}, amx_bf16 {yes[has_amx_bf16()]}")
    try:
        from ..kernels import cpu as _cpu
        describe = getattr(_cpu, "describe_bf16", None)
    except ImportError:
        describe = None
    if describe is not None:
        try:
            line += f"; {describe()}"
        except Exception as exc:    # noqa: BLE001 - info reports, it does not fail
            line += f"; describe_bf16() failed: {' '.join(str(exc).split())}"
    else:
        line += ("; the CPU kernels here have no bfloat16 mode: compute_dtype='bfloat16' "
                 "runs on backend='numpy'")
    return line


def _mpi_info():
    """One line on MPI: mpi4py and the library, and whether GPU gradients are
    reduced in device memory (a CUDA-aware library) or staged through the
    host. Asked in a child process, so that ``fastrnn info`` does not start
    MPI in this one (the query needs an initialised MPI)."""
    import importlib.util
    import json
    import subprocess
    if importlib.util.find_spec("mpi4py") is None:
        return "not installed (--distributed needs it: pip install 'fastrnn[mpi]')"
    if "mpi4py.MPI" in sys.modules:                  # already started here: ask here
        from ..distributed import mpi_info
        d = mpi_info()
    else:
        # not a rank of the launcher's job: the child starts MPI on its own
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "HYDI_", "OMPI_"))}
        code = "import json; from fastrnn.distributed import mpi_info; print(json.dumps(mpi_info()))"
        r = None
        try:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=60, env=env)
            d = json.loads(r.stdout.strip().splitlines()[-1])
        except Exception:   # noqa: BLE001 - a broken MPI install is reported, not raised
            why = " ".join(r.stderr.split())[-300:] if r is not None and r.stderr else "no answer"
            return f"mpi4py installed, but MPI does not start ({why})"
    if not d["available"]:
        return f"unusable ({d['reason']})"
    how = ("CUDA-aware: GPU gradients are reduced in device memory" if d["transport"] == "cuda-aware"
           else "not CUDA-aware: GPU gradients are staged through host memory")
    return f"mpi4py {d['mpi4py']}, {d['library']}; {how}"


def _gpu_info():
    try:
        from numba import cuda
    except ImportError:
        return "numba.cuda not importable"
    try:
        if not cuda.is_available():
            return "none (numba.cuda sees no CUDA device)"
        devs = [f"{d.id}: {d.name.decode() if isinstance(d.name, bytes) else d.name}"
                for d in cuda.gpus]
        return ", ".join(devs)
    except Exception as exc:   # noqa: BLE001 - driver errors vary
        return f"none ({exc})"
