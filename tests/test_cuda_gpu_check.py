"""bench/gpu_check.py's own logic, without a GPU: when a test run counts as
passed, the budget, the report written after every step, the end-to-end hook
when bench/gpu_e2e.py is missing or incomplete. (The script end to end, on
tiny shapes in the simulator: ``python bench/gpu_check.py --dry-run``.)"""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda_sim     # its own process: see tests/README.md

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_defaults_cover_the_grid_and_fit_ten_minutes(gc):
    args = gc.parse_args([])
    assert (args.batch, args.hidden, args.steps) == ([1, 8, 64, 256], [256, 1024], 100)
    assert args.budget == 600 and 0 < args.test_share < 1 and 0 < args.e2e_seconds <= 120
    assert not args.tf32            # strict FP32 unless asked
    assert gc.parse_args(["--dry-run"]).smoke and gc.parse_args(["--smoke"]).smoke
    # every cell at a shape before the next shape: a budget cut loses shapes, not cells
    order = gc.cases(gc.parse_args(["--cells", "lstm,gru", "--batch", "1,8", "--hidden", "4"]))
    assert order == [("lstm", 4, 1), ("gru", 4, 1), ("lstm", 4, 8), ("gru", 4, 8)]
    for bad in (["--budget", "0"], ["--test-share", "1.5"], ["--cells", "transformer"]):
        with pytest.raises(SystemExit):
            gc.parse_args(bad)


def test_a_run_with_nothing_passed_is_a_failure(gc, tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite tests="66" failures="0" errors="0" skipped="66"/>'
                     "</testsuites>")
    counts = gc.summarize_junit(junit)
    assert counts["passed"] == 0
    assert gc.judge_tests(0, counts, False) == (False, "NOTHING RAN (every test skipped)")
    assert gc.judge_tests(0, None, False)[0] is False                  # no XML written
    assert gc.judge_tests(0, counts, True) == (False, "TIMED OUT")
    junit.write_text('<testsuite tests="10" failures="1" errors="0" skipped="2"/>')
    assert gc.judge_tests(1, gc.summarize_junit(junit), False) == (False, "FAILED")
    junit.write_text('<testsuite tests="10" failures="0" errors="0" skipped="2"/>')
    assert gc.judge_tests(0, gc.summarize_junit(junit), False) == (True, "passed")
    assert gc.summarize_junit(tmp_path / "missing.xml") is None


def test_subprocesses_get_the_installed_package(gc, monkeypatch):
    cmd = gc._python_cmd()
    assert cmd[0] == sys.executable and (sys.version_info < (3, 11) or cmd[1] == "-P")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}/elsewhere")
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    env = gc._child_env(smoke=False)
    assert env["PYTHONPATH"] == "/elsewhere" and "NUMBA_ENABLE_CUDASIM" not in env
    assert gc._child_env(smoke=True)["NUMBA_ENABLE_CUDASIM"] == "1"


def test_the_report_is_rewritten_after_every_row(gc, tmp_path):
    args = gc.parse_args(["--dry-run", "--out", str(tmp_path)])
    report = gc.Report(args, {"device": "test device"})
    report.write()
    path = report.base.with_suffix(".json")
    assert json.loads(path.read_text())["complete"] is False
    row = {"cell": "lstm", "T": 3, "B": 2, "I": 8, "H": 8, "strategy": "per_step",
           "compile_s": 1.0, "max_abs_diff_y": 1e-7, "max_abs_diff_dx": 2e-7}
    for mode in ("train", "infer"):
        row.update({f"{mode}_fastrnn_ms": 2.0, f"{mode}_torch_ms": 1.0,
                    f"{mode}_speedup": 0.5, f"{mode}_torch_tf32_ms": 0.5,
                    f"{mode}_speedup_vs_tf32": 0.25})
    report.add_row(row)
    assert json.loads(path.read_text())["results"] == [row]      # on disk already
    report.add_row({"cell": "gru", "T": 3, "B": 2, "I": 8, "H": 8, "skipped": "budget spent"})
    report.update(tests={"status": "NOTHING RAN (every test skipped)", "summary": "66 skipped"},
                  e2e={"status": "skipped: not available (no bench/gpu_e2e.py)", "rows": []})
    md = report.base.with_suffix(".md").read_text()
    assert "INCOMPLETE" in md and "NOTHING RAN" in md and "skipped: budget spent" in md
    assert "TF32" in md and "| lstm | 3 | 2 | 8 | per_step | 2.000 | 1.000 | 0.50 |" in md
    report.update(complete=True)
    assert "INCOMPLETE" not in report.base.with_suffix(".md").read_text()


def test_cases_past_the_budget_are_recorded_as_skipped(gc):
    pytest.importorskip("torch")
    args = gc.parse_args(["--dry-run", "--cells", "lstm,gru"])
    rows = []
    gc.bench(args, None, gc.Clock(1.0), -1.0, rows.append)      # the deadline has passed
    assert [(r["cell"], r["skipped"]) for r in rows] == [("lstm", "budget spent"),
                                                         ("gru", "budget spent")]


def test_end_to_end_hook_without_the_module(gc, tmp_path, monkeypatch):
    args = gc.parse_args(["--dry-run"])
    monkeypatch.setattr(gc, "ROOT", tmp_path)
    (tmp_path / "bench").mkdir()
    assert gc.run_e2e(args, 60, tmp_path)["status"].startswith("skipped: not available")
    (tmp_path / "bench" / "gpu_e2e.py").write_text("STEPS = 3\n")      # no run()
    out = gc.run_e2e(args, 120, tmp_path)
    assert out["status"] == "skipped: not available (gpu_e2e has no run())", out


def test_cpu_scaling_stage(gc, tmp_path):
    """The CPU thread-scaling stage: counts up to the usable cores, its own time
    limit inside the budget, and a real run on tiny shapes writing the JSON."""
    assert gc.scaling_counts(16) == [1, 2, 4, 8, 16]
    assert gc.scaling_counts(6) == [1, 2, 4, 6]
    assert gc.scaling_counts(1) == [1]
    args = gc.parse_args([])
    assert 0 < args.scaling_seconds <= 150
    assert args.scaling_seconds + args.e2e_seconds < 0.5 * args.budget
    assert gc.parse_args(["--skip-scaling"]).scaling_seconds == 0
    assert gc.run_scaling(args, 5, tmp_path)["status"].startswith("skipped")
    out = gc.run_scaling(gc.parse_args(["--dry-run"]), 300, tmp_path)
    assert out["status"] == "done", out
    data = json.loads(Path(out["json"]).read_text())
    assert {r["threads"] for r in data["records"]} == set(out["threads"])
