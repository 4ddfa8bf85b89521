"""Shared test configuration: hypothesis profiles and the table of layer variants.

hypothesis is optional: where it is not installed (a GPU machine with no
package index, say) a stand-in module takes its name, so that the modules
that import it still load; every ``@given`` test is then skipped, with the
reason, and every other test runs.
"""
import os
import sys
import types

import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:
    HealthCheck = settings = None

HYPOTHESIS_MISSING = "hypothesis is not installed (pip install hypothesis)"


class _Anything:
    """Stands for any hypothesis object at import time: every attribute and
    every call gives another one (``st.integers(1, 3).filter(f)``,
    ``HealthCheck.too_slow``...)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()


def _given(*args, **kwargs):
    def skip(test):
        def skipped():
            pytest.skip(HYPOTHESIS_MISSING)
        skipped.__name__ = test.__name__
        skipped.__qualname__ = test.__qualname__
        skipped.__module__ = test.__module__
        skipped.__doc__ = test.__doc__
        return pytest.mark.skip(reason=HYPOTHESIS_MISSING)(skipped)
    return skip


def _settings(*args, **kwargs):
    return lambda test: test


def _composite(fn):
    return lambda *a, **k: _Anything()


def _install_stand_in():
    hyp = types.ModuleType("hypothesis")
    hyp.__doc__ = f"stand-in from tests/conftest.py: {HYPOTHESIS_MISSING}"
    hyp.__fastrnn_stand_in__ = True
    hyp.given = _given
    hyp.settings = _settings
    hyp.HealthCheck = _Anything()
    hyp.assume = hyp.note = hyp.example = lambda *a, **k: (lambda f: f)
    st = types.ModuleType("hypothesis.strategies")
    st.__getattr__ = lambda name: _Anything()
    st.composite = _composite
    hyp.strategies = st
    sys.modules["hypothesis"] = hyp
    sys.modules["hypothesis.strategies"] = st


if settings is not None:
    settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", deadline=None, max_examples=10)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
else:
    _install_stand_in()


def pytest_report_header(config):
    if settings is None:
        return f"{HYPOTHESIS_MISSING}: the property-based (@given) tests are skipped"


@pytest.fixture
def cpu_settings():
    """Set fields of the CPU backend's settings (``fastrnn.kernels.cpu.settings``)
    for one test: ``cpu_settings(use_packed=False, num_threads=2)``; every field
    set is restored after the test."""
    from fastrnn.kernels import cpu
    changes = []

    def set_(**kw):
        changes.append(cpu.configure(**kw))
        return cpu.settings

    yield set_
    for c in reversed(changes):
        c.__exit__(None, None, None)
