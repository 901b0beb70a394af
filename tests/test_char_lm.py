"""Char LM experiment: quick run's outputs and that online training with both
estimators beats the unigram model on held-out text."""

import csv
import json
import os

import numpy as np
import pytest

from experiments import char_lm
from tests.helpers import char_lm_numbers, quick_reproductions


def test_unigram_bpc():
    # uniform over 4 symbols: 2 bits; add-one smoothing keeps it finite
    train = np.array([0, 1, 2, 3] * 25)
    assert char_lm.unigram_bpc(train, np.array([0, 1, 2, 3]), 4) == pytest.approx(2.0)
    assert np.isfinite(char_lm.unigram_bpc(train, np.array([4]), 5))


def test_held_out_reads_the_whole_split_by_default():
    ids = np.arange(1003)
    whole = char_lm.held_out(ids, None, 10)  # 10 windows of 100: all but 3
    assert whole.shape == (100, 10) and len(np.unique(whole)) == 1000
    assert whole[0, 0] == 0 and whole[-1, -1] == 1002
    part = char_lm.held_out(ids, 200, 10)  # 10 windows of 20 spread over ids
    assert part.shape == (20, 10) and part[0, 0] == 0 and part[-1, -1] == 1002
    assert char_lm.parse_args([]).valid_chars is None
    with pytest.raises(ValueError, match="too few"):
        char_lm.held_out(ids[:15], None, 10)


@pytest.mark.xdist_group("quick_reproductions")  # one shared run
def test_quick_run():
    # `python -m experiments.NAME --quick --out DIR`, run once for these tests
    # by tests/helpers.quick_reproductions; its JSON is the dict main returns.
    out = quick_reproductions()
    meta = json.loads((out / "char_lm.json").read_text())
    for ext in ("csv", "json", "png"):
        assert (out / f"char_lm.{ext}").stat().st_size > 0
    with open(out / "char_lm.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"run", "backward_steps", "seconds", "valid_bpc"} <= set(rows[0])
    saved = json.loads((out / "char_lm.json").read_text())
    assert saved["corpus"]["n_chars"] == 60_000 and "jax" in saved["versions"]
    runs = {s["run"]: s for s in meta["summary"]}
    assert len(runs) == 2
    V = meta["corpus"]["vocab"]
    for s in runs.values():
        # untrained ≈ uniform over the vocabulary; trained beats the unigram
        assert s["initial_valid_bpc"] == pytest.approx(np.log2(V), abs=0.5)
        assert s["final_valid_bpc"] < meta["unigram_valid_bpc"]
    # matched cost: same steps, comparable number of updates
    tb = next(s for n, s in runs.items() if "TBPTT" in n)
    ar = next(s for n, s in runs.items() if "ARTBP" in n)
    assert 0.5 < ar["updates"] / tb["updates"] < 2.0
    # matched backward steps; every seed's run reported; test bpc once
    assert tb["backward_steps"] == ar["backward_steps"] == 600 * 8
    for s in runs.values():
        assert s["seeds"] == len(s["updates_per_seed"]) == 2
        assert s["updates"] == pytest.approx(np.mean(s["updates_per_seed"]))
        assert s["test_bpc"] < meta["unigram_test_bpc"]
        assert s["final_valid_bpc_se"] >= 0 and np.isfinite(s["test_bpc_se"])
    assert tb["updates_per_seed"] == [600 // 8] * 2
    seeds = {r["seed"] for r in rows}
    assert seeds == {"0", "1"}


def test_chunked_training_is_one_run(tmp_path, monkeypatch):
    # the stream is fed to train.train in chunks carrying the state: the
    # curve (times aside) does not depend on the chunk size, nor on whether
    # the runs train one after the other or in worker processes (--jobs),
    # nor on checkpoints (each call its own --out: none resumes another's)
    argv = ["--quick", "--seeds", "1", "--steps", "160", "--eval-every", "40"]
    argv += ["--max-chars", "20000"]
    whole = char_lm.main([*argv, "--out", str(tmp_path / "whole")])
    # --jobs 2: the two runs in worker processes (default CHUNK there)
    parallel = char_lm.main([*argv, "--jobs", "2", "--out", str(tmp_path / "jobs")])
    monkeypatch.setattr(char_lm, "CHUNK", 50)
    chunked = char_lm.main(
        [*argv, "--checkpoint-every", "0", "--out", str(tmp_path / "chunked")]
    )
    assert (tmp_path / "jobs" / "char_lm.ckpt").is_dir()  # saved by the workers
    assert not (tmp_path / "chunked" / "char_lm.ckpt").exists()  # 0: none
    for other in (chunked, parallel):
        for a, b in zip(whole["summary"], other["summary"], strict=True):
            assert a["updates_per_seed"] == b["updates_per_seed"]
            assert a["final_valid_bpc"] == b["final_valid_bpc"]
            assert a["test_bpc"] == b["test_bpc"]


def test_training_stream_wraps_into_epochs():
    x, y, epochs = char_lm.training_stream(np.arange(21), 2, 25)
    # streams of 10 ids give 9 (input, target) pairs; 25 steps = 25/9 epochs
    assert epochs == pytest.approx(25 / 9) and x.shape == y.shape == (25, 2)
    assert (x[9] == x[0]).all() and (y[:, 1] == x[:, 1] + 1).all()


def test_bad_flag(tmp_path):
    with pytest.raises(SystemExit):
        char_lm.main(["--k", "0", "--out", str(tmp_path)])


def test_quick_honours_flags_and_prints_summary(tmp_path, capsys):
    # --quick sets defaults only: the explicit seed, steps and clip are kept.
    argv = ["--quick", "--seed", "3", "--steps", "64", "--eval-every", "32"]
    argv += ["--clip", "0.5", "--max-chars", "20000", "--out", str(tmp_path)]
    meta = char_lm.main(argv)
    cfg = meta["config"]
    assert (cfg["seed"], cfg["steps"], cfg["clip"]) == (3, 64, 0.5)
    assert (cfg["hidden"], cfg["k"]) == (32, 8)  # quick defaults
    assert meta["seed"] == 3 and meta["error"] is None
    saved = json.loads((tmp_path / "char_lm.json").read_text())
    assert saved["config"] == cfg and saved["versions"]["jax"]
    stdout = capsys.readouterr().out
    assert "unigram baseline" in stdout and "wrote:" in stdout
    for ext in ("csv", "json", "png"):
        assert str(tmp_path / f"char_lm.{ext}") in stdout
    # --replot redraws the figure from the CSV and JSON alone
    png = tmp_path / "char_lm.png"
    png.unlink()
    char_lm.main(["--replot", "--out", str(tmp_path)])
    assert png.stat().st_size > 0


@pytest.mark.parametrize(
    "bad",
    [
        ["--clip", "-1"],
        ["--lr", "inf"],
        ["--alpha", "1"],
        ["--hidden", "1.5"],
        ["--checkpoint-every", "-5"],
    ],
)
def test_bad_flags_refused(bad, capsys):
    with pytest.raises(SystemExit):
        char_lm.parse_args(bad)
    assert "--" + bad[0].lstrip("-") in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--batch", "7", "--devices", "2"], "--batch 7 must divide evenly over"),
        (["--batch", "4096", "--devices", "4096"], "--devices must be between 1 and"),
        (["--devices", "0"], "argument --devices: expected an integer ≥ 1"),
        (["--process-id", "1"], "missing --coordinator, --num-processes"),
    ],
)
def test_bad_device_and_process_flags_refused(bad, message, capsys):
    with pytest.raises(SystemExit) as exc:
        char_lm.parse_args(bad)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_each_call_uses_its_own_flags(tmp_path):
    # runs of one configuration share a setup within a call; a second call
    # in the same process with another learning rate must not reuse it
    argv = ["--quick", "--seeds", "1", "--steps", "160", "--eval-every", "80"]
    argv += ["--max-chars", "20000", "--checkpoint-every", "0"]
    fast = char_lm.main([*argv, "--out", str(tmp_path / "fast")])
    slow = char_lm.main([*argv, "--lr", "1e-4", "--out", str(tmp_path / "slow")])
    for a, b in zip(fast["summary"], slow["summary"], strict=True):
        assert a["final_valid_bpc"] != b["final_valid_bpc"]


def test_forget_bias_moves_only_the_lstm_forget_gate():
    import jax

    key = jax.random.key(0)
    for embed in (0, 8):
        params = char_lm.make_model("lstm", 10, embed).init(key, embed or 10, 4)
        moved = char_lm.make_model("lstm", 10, embed, 1.0).init(key, embed or 10, 4)
        delta = np.asarray(moved["cell"]["bias_hh"] - params["cell"]["bias_hh"])
        np.testing.assert_array_equal(delta, np.repeat([0.0, 1.0, 0.0, 0.0], 4))
        for name in ("weight_ih", "weight_hh", "bias_ih"):
            np.testing.assert_array_equal(moved["cell"][name], params["cell"][name])
    gru = char_lm.make_model("gru", 10, 8).init(key, 8, 4)
    gru_fb = char_lm.make_model("gru", 10, 8, 1.0).init(key, 8, 4)
    for a, b in zip(*map(jax.tree_util.tree_leaves, (gru, gru_fb)), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- resuming ---

RESUMABLE = ["--quick", "--seeds", "1", "--steps", "160", "--eval-every", "40"]
RESUMABLE += ["--max-chars", "20000", "--checkpoint-every", "40"]


class Killed(Exception):
    """Stands in for a kill right after a checkpoint is on disk."""


def test_run_stopped_after_a_checkpoint_resumes_to_the_same_numbers(
    tmp_path, monkeypatch, capsys
):
    """Stopped right after its sixth checkpoint (the TBPTT run done, the
    ARTBP run part-way), the same command goes on from the checkpoints and
    writes the CSV and JSON of an uninterrupted run, bit for bit (times
    aside)."""
    from jbptt import runs

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    char_lm.main([*RESUMABLE, "--out", str(whole)])
    save, saved = runs.Checkpointer.save, []

    def save_then_stop(self, step, state):
        save(self, step, state)
        saved.append((os.path.basename(self.directory), step))
        if len(saved) == 6:
            raise Killed

    monkeypatch.setattr(runs.Checkpointer, "save", save_then_stop)
    with pytest.raises(Killed):
        char_lm.main([*RESUMABLE, "--out", str(cut)])
    monkeypatch.undo()
    assert saved[3] == ("lstm-k8-tbptt-seed0", 160)  # done, with its test bpc
    run, step = saved[-1]
    assert run == "lstm-k8-artbp-seed0" and 80 <= step < 160  # part-way
    assert not (cut / "char_lm.csv").exists()
    capsys.readouterr()
    char_lm.main([*RESUMABLE, "--out", str(cut)])
    stdout = capsys.readouterr().out
    assert "LSTM TBPTT(k=8) seed 0: done at step 160 of 160" in stdout
    assert f"LSTM ARTBP(L0=8, a=4) seed 0: resuming at step {step} of 160" in stdout
    assert char_lm_numbers(cut) == char_lm_numbers(whole)


def test_checkpoints_of_another_configuration_are_refused(tmp_path, capsys):
    """A second seed reuses the first seed's finished runs (the number of
    seeds is not part of a run's configuration); another learning rate is
    refused, naming what changed and the folder, before any training."""
    argv = ["--quick", "--seeds", "1", "--steps", "64", "--eval-every", "32"]
    argv += ["--max-chars", "20000", "--out", str(tmp_path)]
    one = char_lm.main(argv)
    capsys.readouterr()
    two = char_lm.main([*argv[:2], "2", *argv[3:]])
    stdout = capsys.readouterr().out
    assert stdout.count(": done at step 64 of 64") == 2  # seed 0, both runs
    assert "seed 1: done" not in stdout and "seed 1: valid bpc" in stdout
    for a, b in zip(one["summary"], two["summary"], strict=True):
        assert b["updates_per_seed"][0] == a["updates_per_seed"][0]
    with pytest.raises(SystemExit) as exc:
        char_lm.main([*argv, "--lr", "0.02"])
    message = str(exc.value)
    assert "LSTM TBPTT(k=8) seed 0 cannot resume" in message
    assert "lr: 0.01 -> 0.02" in message and "another --out or --name" in message
    assert str(tmp_path / "char_lm.ckpt" / "lstm-k8-tbptt-seed0") in message
