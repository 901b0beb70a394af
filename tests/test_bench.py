"""The benchmark's ``--quick`` form runs and writes its outputs."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import bench_grad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_runs(tmp_path, capsys):
    # --quick sets defaults only: the explicit --repeats is kept.
    argv = ["--quick", "--no-torch", "--cells", "elman", "--repeats", "3"]
    result = bench_grad.main(argv + ["--out", str(tmp_path)])
    assert result["config"]["repeats"] == 3
    assert result["metadata"]["versions"]["jax"]
    stdout = capsys.readouterr().out
    assert "wrote:" in stdout and str(tmp_path / "results.json") in stdout
    for name in ("RESULTS.md", "results.json", "results_grad.csv", "speedups.png"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["quick"] is True
    assert {r["cell"] for r in result["grad"]} == {"elman"}
    for r in result["grad"]:
        assert r["jbptt_ms"] > 0 and r["jax_ms"] > 0 and r["gemm_limit_ms"] > 0
    variants = {r["variant"] for r in result["long"]}
    assert "jbptt checkpoint='sqrt'" in variants
    assert all(r["peak_MB"] > 0 for r in result["long"])
    assert result["sweep"] and result["sweep"][0]["K"] == 8
    text = (tmp_path / "RESULTS.md").read_text()
    assert "vs jax" in text and "checkpoint" in text


@pytest.mark.parametrize("bad", [["--repeats", "-1"], ["--processes", "0"]])
def test_bench_refuses_bad_counts(bad, capsys):
    with pytest.raises(SystemExit):
        bench_grad.parse_args(bad)
    assert bad[0] in capsys.readouterr().err


def test_bench_rejects_unknown_part(tmp_path):
    with pytest.raises(ValueError, match="--parts"):
        bench_grad.main(["--quick", "--parts", "nope", "--out", str(tmp_path)])


def test_bench_case_in_fresh_processes_gives_medians(tmp_path):
    rows = bench_grad.bench_grad(
        [(6, 2, 3, 4)], ["gru"], 1, False, lambda s: None, processes=3
    )
    (row,) = rows
    assert row["processes"] == 3 and row["cell"] == "gru"
    lo, hi = map(float, row["speedup_vs_jax_range"].split("–"))
    assert lo <= row["speedup_vs_jax"] <= hi


def test_median_row_takes_the_median_of_each_figure():
    runs = [{"cell": "elman", "T": 5, "jbptt_ms": x, "speedup_vs_jax": 10 / x}
            for x in (1.0, 4.0, 2.0)]  # fmt: skip
    row = bench_grad._median_row(runs)
    assert row["jbptt_ms"] == 2.0 and row["speedup_vs_jax"] == 5.0
    assert row["T"] == 5 and row["speedup_vs_jax_range"] == "2.50–10.00"


def test_profile_loops_counts_loop_thunks_and_temporaries(capsys):
    from benchmarks import profile_loops

    result = profile_loops.main(["--cell", "gru", "--shape", "6,2,3,4"])
    for label in ("jbptt", "jax.value_and_grad"):
        r = result[label]
        assert len(r["loop_bodies"]) >= 2  # a forward and a reverse loop
        assert all(len(ops) > 0 for ops in r["loop_bodies"])
        assert r["temp_MiB"] >= 0 and r["minor_faults"] >= 0
    assert result["page_fault_us"] > 0
    assert "thunks" in capsys.readouterr().out


def test_loop_bodies_reads_while_bodies_from_hlo():
    from benchmarks import profile_loops

    hlo = """%body.1 (p: (s32[], f32[2])) -> (s32[], f32[2]) {
  %p = (s32[], f32[2]) parameter(0)
  %g = f32[2]{0} get-tuple-element(%p), index=1
  %f = f32[2]{0} fusion(%g), kind=kLoop, calls=%fc
  %c = s32[] copy(%i)
  ROOT %t = (s32[], f32[2]) tuple(%c, %f)
}

ENTRY %main (a: f32[2]) -> f32[2] {
  %w = (s32[], f32[2]) while(%init), condition=%cond.1, body=%body.1
}"""
    assert profile_loops.loop_bodies(hlo) == [["fusion", "copy"]]


def test_cudnn_peer_computes_jbptts_loss_and_gradient():
    # jax.experimental.rnn.lstm runs on CUDA only; its reference lstm_ref
    # takes the same flat weights unpacked and runs here, so the peer's
    # weight layout, loss and gradient are checked against jbptt's on CPU.
    from jax.experimental import rnn

    def lstm_on_cpu(x, h0, c0, w, seq_lengths, *, input_size, hidden_size,
                    num_layers, dropout, bidirectional):  # fmt: skip
        sizes = (input_size, hidden_size, num_layers)
        unpacked = rnn.unpack_lstm_weights(w, *sizes, bidirectional)
        return rnn.lstm_ref(
            x, h0, c0, *unpacked, seq_lengths, *sizes, dropout, bidirectional
        )

    T, B, I, H = 5, 2, 3, 4
    cell, args = bench_grad._problem("lstm", T, B, I, H, dtype=jnp.float64)
    fn, weights = bench_grad.cudnn_value_and_grad(args[0], T, B, I, H, lstm_on_cpu)
    L_cu, g_cu = fn(weights, args[2], args[3])
    (L, _), g = bench_grad.jbptt_value_and_grad(cell)(*args)
    assert abs(float(L_cu) - float(L)) <= 1e-12 * abs(float(L))
    want = bench_grad.cudnn_weights(g)
    assert float(jnp.max(jnp.abs(g_cu - want))) <= 1e-10 * float(jnp.max(jnp.abs(want)))


def test_gpu_peers_say_why_they_are_skipped_on_cpu(tmp_path, capsys):
    assert jax.default_backend() == "cpu"
    assert "backend is 'cpu'" in bench_grad.cudnn_unavailable()
    argv = ["--quick", "--parts", "grad", "--cells", "lstm", "--repeats", "1",
            "--cudnn", "--shapes", "7,2,3,4", "--out", str(tmp_path)]  # fmt: skip
    result = bench_grad.main(argv)
    (row,) = result["grad"]
    assert (row["T"], row["B"]) == (7, 2) and math.isnan(row["cudnn_ms"])
    assert result["config"]["skipped"] == [bench_grad.cudnn_unavailable()]
    assert "cuDNN LSTM skipped" in capsys.readouterr().out
    assert "cuDNN LSTM skipped" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.parametrize(
    "bad", [["--shapes", "1,2,3"], ["--shapes", "1,2,x,4"], ["--shapes", "0,2,3,4"]]
)
def test_bench_refuses_bad_shapes(bad, capsys):
    with pytest.raises(SystemExit):
        bench_grad.parse_args(bad)
    assert "--shapes takes four positive ints" in capsys.readouterr().err


def test_bench_long_variants_select_rows(tmp_path):
    argv = ["--quick", "--parts", "long", "--cells", "elman", "--repeats", "1",
            "--long-variants", "jbptt-sqrt", "--out", str(tmp_path)]  # fmt: skip
    result = bench_grad.main(argv)
    assert [r["variant"] for r in result["long"]] == ["jbptt checkpoint='sqrt'"]
    with pytest.raises(ValueError, match="--long-variants"):
        bench_grad.main(["--quick", "--long-variants", "nope", "--out", str(tmp_path)])


def test_a_failing_cudnn_peer_keeps_jbptts_row(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("cuDNN is broken here")

    monkeypatch.setattr(bench_grad, "cudnn_unavailable", lambda: None)
    monkeypatch.setattr(bench_grad, "cudnn_value_and_grad", broken)
    row = bench_grad.grad_case("lstm", 4, 2, 3, 4, 1, False, cudnn=True)
    assert row["jbptt_ms"] > 0 and math.isnan(row["cudnn_ms"])
    assert "cuDNN is broken here" in capsys.readouterr().out


def test_bench_devices_quick_splits_the_batch(tmp_path):
    # Host devices are set before jax starts, so the script runs on its own.
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "benchmarks.bench_devices", "--quick"]
    cmd += ["--cells", "lstm", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_devices.json").read_text())
    (grad,) = result["grad"]
    assert grad["cell"] == "lstm" and grad["one_ms"] > 0 and grad["split_ms"] > 0
    assert grad["max_rel"] < 1e-4  # float32: the same gradients, summed in parts
    (online,) = result["online"]
    for key in ("jbptt_one", "jbptt_split", "jax_one", "jax_split"):
        assert online[key] > 0, key
    text = (tmp_path / "bench_devices.md").read_text()
    assert "split over 2" in text and "| lstm | 4 |" in text


def test_segment_windows_give_the_full_reverse_scans_gradient():
    from benchmarks import profile_segment_windows

    rows = profile_segment_windows.main(["--quick", "--cells", "gru"])
    assert [r["k"] for r in rows] == [1, 4]
    for r in rows:
        assert r["max_rel"] < 1e-5 and r["full_ms"] > 0 and r["segments_ms"] > 0
