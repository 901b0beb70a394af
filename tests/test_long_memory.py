"""experiments.long_memory --quick: runs, writes its files with provenance,
refuses bad flags, and on a short recall delay full BPTT and exact diagonal
RTRL learn what TBPTT truncated below the delay does not."""

import json

import numpy as np
import pytest

from experiments import long_memory


def test_the_estimators_that_do_not_apply_are_named():
    assert long_memory.applies("lstm", "rtrl")  # dense RTRL: not run
    assert long_memory.applies("lru", "uoro")  # complex state
    assert long_memory.applies("lru", "rtrl") is None
    assert long_memory.applies("min_gru", "uoro") is None


def test_every_k_segments_cover_the_stream():
    est = long_memory.online_estimator("rtrl", 16)
    lengths, w = est.online().plan(None, 100)
    assert w is None and lengths.sum() == 100 and set(lengths) == {16, 4}


def test_recall_answer_lies_D_steps_back():
    import jax

    xs, ys, resets = long_memory.recall(5).stream(jax.random.key(0), 20, 3)
    xs, ys, resets = map(np.asarray, (xs, ys, resets))
    scored = np.nonzero(ys[:, 0, 1])[0]
    assert scored.tolist() == [5, 11, 17] and resets[:, 0].nonzero()[0].tolist() == [
        0, 6, 12, 18
    ]  # fmt: skip
    assert np.allclose(ys[scored, :, 0], xs[scored - 5, :, 0])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--r-min", "0.9", "--r-max", "0.5"], "--r-min must be < --r-max"),
        (["--k", "1"], "--k must be ≥ 2"),
        (["--delays", "0"], "expected an integer ≥ 1"),
        (["--noise", "nan"], "expected a finite number"),
    ],
)
def test_bad_flags_are_refused_with_a_reason(argv, needle, capsys):
    with pytest.raises(SystemExit):
        long_memory.parse_args(argv)
    assert needle in capsys.readouterr().err


def test_quick_run(tmp_path, capsys):
    long_memory.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "long_memory.json").read_text())
    assert saved["error"] is None and saved["seeds"] == [0, 1]
    assert saved["config"]["quick"] and "jax" in saved["versions"]
    assert saved["seconds"] > 0 and "utc_time" in saved
    for f in ("long_memory.csv", "long_memory.png"):
        assert (tmp_path / f).stat().st_size > 0
    out = capsys.readouterr().out
    assert "summary:" in out and "wrote:" in out
    by = {s["estimator"]: s for s in saved["summary"]}
    assert set(by) == {"tbptt", "rtrl", "bptt"}
    assert all(s["seeds"] == 2 and s["updates"] == 120 for s in by.values())
    # score: held-out MSE over the trivial predictor's (1 for ŷ = 0)
    assert by["bptt"]["final_score"] < 0.1
    assert by["rtrl"]["final_score"] < 0.7  # exact online gradients learn
    assert by["tbptt"]["final_score"] > by["rtrl"]["final_score"]  # k < D
    (bias,) = saved["truncation_bias"]
    assert 0 < bias["rel_bias_init"] <= 1.5 and bias["rel_bias_bptt_end"] > 0
