"""benchmarks/gpu.sh and benchmarks/gpu_check.py, run on CPU.

The GPU run itself needs a GPU; what can be checked here is that the
comparison catches a wrong gradient, that the script runs every step and
writes one summary with each step's status, and that a failing or
timed-out step does not stop the ones after it.
"""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
LONG = ("c. T = 100 000, checkpointed: LSTM", "c. T = 100 000, checkpointed: Elman")
DIAGONAL = ("a. diagonal cells'", "b. diagonal recurrences")
STEPS = ("install", "device", "a. gradients", "b. value+grad", *DIAGONAL, *LONG,
         "d. online", "e. exact diagonal RTRL", "f. layer-wise RTRL")  # fmt: skip


def _perturbed(eps):
    """A gradient function off by a relative ``eps`` in every gradient."""

    def make(cell):
        vg = gpu_check.jbptt_value_and_grad(cell)

        def fn(*args):
            value, g = vg(*args)
            return value, jax.tree_util.tree_map(lambda a: a * (1 + eps), g)

        return fn

    return make


@pytest.mark.parametrize(
    "case, dtype, tol, eps",
    [
        ("stack", "float64", 1e-10, 1e-8),
        ("masked", "float32", 1e-4, 1e-3),
        ("lru", "float64", 1e-10, 1e-8),  # complex state
        ("min_gru", "float64", 1e-10, 1e-8),
    ],
)
def test_gpu_check_passes_jbptt_and_fails_a_wrong_gradient(case, dtype, tol, eps):
    shape = gpu_check.QUICK_SHAPE
    row = gpu_check.check(case, dtype, "highest", tol, shape)
    assert row["ok"] and row["max_err"] <= tol
    wrong = gpu_check.check(case, dtype, "highest", tol, shape, _perturbed(eps))
    assert not wrong["ok"]
    assert wrong["err_grad"] > tol and wrong["err_loss"] <= tol
    assert "FAIL" in gpu_check.table([wrong]) and "pass" in gpu_check.table([row])


def test_gpu_check_reports_a_broken_case_and_checks_the_others(tmp_path, monkeypatch):
    real = gpu_check.check

    def check(case, *args, **kwargs):
        if case == "gru":
            raise RuntimeError("no kernel for this\nsecond line")
        return real(case, *args, **kwargs)

    monkeypatch.setattr(gpu_check, "check", check)
    result = gpu_check.main(["--quick", "--cases", "elman,gru", "--out", str(tmp_path)])
    assert not result["ok"]
    by_case = {(r["case"], r["dtype"]): r for r in result["rows"]}
    assert by_case["elman", "float64"]["ok"] and by_case["elman", "float32"]["ok"]
    assert by_case["gru", "float64"]["error"] == "RuntimeError: no kernel for this"
    md = (tmp_path / "gpu_check.md").read_text()
    assert "FAIL" in md and "All checks pass: NO" in md and "no kernel" in md


def test_gpu_check_dtypes_runs_only_the_dtypes_asked_for(tmp_path):
    argv = ["--quick", "--cases", "lru,min_gru", "--dtypes", "float64"]
    result = gpu_check.main(argv + ["--out", str(tmp_path)])
    assert result["ok"] and len(result["rows"]) == 2
    assert {r["dtype"] for r in result["rows"]} == {"float64"}
    assert {r["case"] for r in result["rows"]} == {"lru", "min_gru"}
    assert "float32: not asked for (--dtypes)" in result["skipped"]
    # no check left to run is no pass
    none = gpu_check.main(argv + ["--no-x64", "--out", str(tmp_path / "none")])
    assert none["rows"] == [] and not none["ok"]
    with pytest.raises(ValueError, match="--dtypes"):
        gpu_check.main(["--quick", "--dtypes", "float16", "--out", str(tmp_path)])


def test_gpu_check_diagonal_ys_have_the_output_shape():
    # The LRU's output has the input's size I, not the state's H.
    T, B, I, H = 5, 2, 3, 4
    _, (_, h0, _, ys), _ = gpu_check.problem("lru", (T, B, I, H), "float64")
    assert ys.shape == (T, B, I) and h0.shape == (B, H) and h0.dtype.kind == "c"
    _, (_, _, _, ys), _ = gpu_check.problem("min_gru", (T, B, I, H), "float64")
    assert ys.shape == (T, B, H)


def test_gpu_check_reference_masks_each_sequence():
    # The padded batch's reference is the sum over sequences of each one run
    # alone for its own length, and h_T is each one's own last state.
    T, B = 6, 3
    cell, (params, h0, xs, ys), lengths = gpu_check.problem(
        "masked", (T, B, 2, 4), "float64"
    )
    ref = gpu_check.reference_value_and_grad(cell)
    (L, h_T), g = ref(params, h0, xs, ys, lengths)
    assert int(lengths.min()) < T
    alone = []
    for b, n in enumerate(lengths.tolist()):
        h0_b = cell.initial_state(params)
        alone.append(ref(params, h0_b, xs[:n, b], ys[:n, b], None))
    tm = jax.tree_util.tree_map
    L_sum = sum(float(a[0][0]) for a in alone)
    g_sum = tm(lambda *gs: sum(gs), *[a[1] for a in alone])
    h_own = tm(lambda *hs: jax.numpy.stack(hs), *[a[0][1] for a in alone])
    assert abs(float(L) - L_sum) <= 1e-12 * abs(L_sum)
    assert gpu_check.rel_err(g, g_sum) <= 1e-12
    assert gpu_check.rel_err(h_T, h_own) <= 1e-12


def _run(tmp_path, env_extra, *args):
    env = {**os.environ, "JBPTT_GPU_SKIP_INSTALL": "1", "JAX_PLATFORMS": "cpu"}
    cache = jax.config.jax_compilation_cache_dir  # the suite's (conftest.py)
    if cache:  # the steps' processes load their programs from it too
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        )
    env.update(env_extra)
    return subprocess.run(
        ["bash", str(SCRIPT), *args, "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )  # fmt: skip


def _statuses(text: str) -> dict[str, str]:
    """Step title -> status, from the summary's steps table."""
    table = text.split("## Steps", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \| .*\|$", table, re.MULTILINE)
    return {title: st for title, st in rows if title not in ("step", "---")}


def _status_of(statuses, prefix):
    (st,) = [v for k, v in statuses.items() if k.startswith(prefix)]
    return st


def test_gpu_sh_quick_on_cpu_writes_one_summary_with_every_step(tmp_path):
    done = _run(tmp_path, {"JBPTT_GPU_PYTHON": sys.executable}, "--quick")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "jax.devices(): [CpuDevice" in done.stdout
    text = (tmp_path / "gpu_results.md").read_text()
    statuses = _statuses(text)
    assert len(statuses) == len(STEPS)
    assert _status_of(statuses, "install") == "skipped"
    assert "JBPTT_GPU_SKIP_INSTALL=1" in text
    for step in STEPS[1:]:
        assert _status_of(statuses, step) == "ok", step
    assert "jax backend `cpu`" in text and "no accelerator" in text
    assert "budget 960 s" in text  # --quick doubles the budget and time boxes
    # each step's table is in the one file, and peers that cannot run say why
    assert "| elman | float64 | highest |" in text and "All checks pass: yes" in text
    # the diagonal cells' float64 check and their benchmark, one row per cell
    assert "| lru | float64 | highest |" in text
    assert "| min_gru | float64 | highest |" in text
    assert "| lru | float32 |" not in text
    assert "| lru | 16 | 2 | 3 | 4 |" in text and "| min_gru | 16 | 2 | 3 | 4 |" in text
    assert "scan / jbptt" in text
    assert "cuDNN LSTM skipped: the backend is 'cpu'" in text
    assert "| lstm | 8 | 2 | 3 | 4 |" in text
    assert "| lstm | jbptt checkpoint='sqrt' |" in text
    assert "| elman | jax + checkpoint √T segments |" in text
    assert "| elman | 4 |" in text  # bench_online's row
    assert "| lru | 3 | 8 | 2 | 4 | 3 |" in text  # bench_diagonal_rtrl's window-3 row
    assert "| 2×min_gru | 3 | 8 | 2 | 4 | 4 |" in text  # and its two-layer stack's
    for name in ("check/gpu_check.json", "grad/results.json",
                 "long_lstm/results.json", "long_elman/results.json",
                 "online/bench_online.json", "check_diagonal/gpu_check.json",
                 "diagonal/bench_diagonal.json",
                 "diagonal/bench_diagonal_grad.csv",
                 "rtrl/bench_diagonal_rtrl.json",
                 "stack/bench_diagonal_rtrl.json"):  # fmt: skip
        assert (tmp_path / name).exists(), name


def test_gpu_sh_goes_on_after_a_failed_and_a_timed_out_step(tmp_path):
    # An interpreter that fails the check and hangs in the long part; every
    # other step "runs" at once, the install's pip included.
    fake = tmp_path / "fake_python"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *benchmarks.gpu_check*) echo "boom: the check broke" >&2; exit 3 ;;\n'
        '  *"--parts long"*) sleep 60 ;;\n'
        "  *jax.__version__*) echo 0.10.2; exit 0 ;;\n"
        "esac\n"
        'echo "ran $1 $2 $3 $4 $5"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    env = {"JBPTT_GPU_PYTHON": str(fake), "JBPTT_GPU_STEP_S": "2",
           "JBPTT_GPU_SKIP_INSTALL": "0"}  # fmt: skip
    done = _run(out, env)
    assert done.returncode == 1
    # the install asks pip for jax with CUDA at the interpreter's jax version
    assert "ran -m pip install -q jax[cuda12]==0.10.2" in done.stdout
    text = (out / "gpu_results.md").read_text()
    statuses = _statuses(text)
    assert _status_of(statuses, "install") == "ok"
    assert _status_of(statuses, "a. gradients") == "failed"
    assert _status_of(statuses, DIAGONAL[0]) == "failed"  # gpu_check too
    assert [_status_of(statuses, step) for step in LONG] == ["timed out"] * 2
    # the steps after each of them still ran
    assert _status_of(statuses, "b. value+grad") == "ok"
    assert _status_of(statuses, DIAGONAL[1]) == "ok"
    assert _status_of(statuses, "d. online") == "ok"
    assert _status_of(statuses, "e. exact diagonal RTRL") == "ok"
    assert "boom: the check broke" in text and "exit status 3" in text
    assert "Not known: the device step" in text  # the fake wrote no device.md


def test_gpu_sh_refuses_unknown_arguments(tmp_path):
    done = _run(tmp_path, {}, "--nope")
    assert done.returncode == 2 and "--nope" in done.stderr
