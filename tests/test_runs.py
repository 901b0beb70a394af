"""Resumable result files and checkpoints: torn writes, SIGKILL mid-run,
changed configurations, and bitwise-identical resumed training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbptt
from jbptt import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ result file ---


def test_append_resume_and_skip(tmp_path):
    path = tmp_path / "r.jsonl"
    f = runs.ResultFile(path, {"T": 8, "ks": (1, 2)}, key=("cell", "k"))
    assert f.resumed == 0
    assert f.append({"cell": "elman", "k": 1, "bias": 0.25})
    assert f.append({"cell": "elman", "k": 2, "bias": 1 / 3})
    assert not f.append({"cell": "elman", "k": 1, "bias": 9.0})  # duplicate key
    g = runs.ResultFile(path, {"ks": [1, 2], "T": 8}, key=("cell", "k"))
    assert g.resumed == 2 and len(g) == 2
    assert g.done({"cell": "elman", "k": 2, "bias": 0.0})
    assert not g.done({"cell": "lstm", "k": 2})
    assert g.rows() == f.rows()
    assert g.rows()[1]["bias"] == 1 / 3  # floats round-trip exactly
    config, rows = runs.read_rows(path)
    assert config == {"T": 8, "ks": [1, 2]} and rows == g.rows()


def test_torn_last_line_is_dropped_and_cut(tmp_path):
    path = tmp_path / "r.jsonl"
    f = runs.ResultFile(path, {"seed": 1}, key=("i",))
    f.extend({"i": i, "x": float(i)} for i in range(3))
    with open(path, "ab") as fh:  # a write cut short by a kill
        fh.write(b'{"i": 3, "x": 3.')
    g = runs.ResultFile(path, {"seed": 1}, key=("i",))
    assert [r["i"] for r in g.rows()] == [0, 1, 2]
    assert g.append({"i": 3, "x": 3.0})
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1]) == {"i": 3, "x": 3.0}


def test_changed_config_is_refused_with_the_difference(tmp_path):
    path = tmp_path / "r.jsonl"
    runs.ResultFile(path, {"T": 8, "seed": 0}, key=("i",)).append({"i": 0})
    with pytest.raises(ValueError, match=r"different configuration.*T: 8 -> 9"):
        runs.ResultFile(path, {"T": 9, "seed": 0}, key=("i",))
    other = runs.ResultFile(path, {"T": 9, "seed": 0}, key=("i",), on_mismatch="new")
    assert other.path != str(path) and other.config_hash[:10] in other.path
    assert len(other) == 0 and len(runs.read_rows(path)[1]) == 1  # untouched
    other.append({"i": 5})
    again = runs.ResultFile(path, {"T": 9, "seed": 0}, key=("i",), on_mismatch="new")
    assert again.path == other.path and again.resumed == 1
    old_hash = runs.config_hash({"T": 8, "seed": 0})[:10]
    fresh = runs.ResultFile(path, {"T": 9}, key=("i",), on_mismatch="overwrite")
    assert len(fresh) == 0 and runs.read_rows(path)[0] == {"T": 9}
    kept = runs.read_rows(f"{path}.replaced-{old_hash}")  # nothing deleted
    assert kept == ({"T": 8, "seed": 0}, [{"i": 0}])


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(config={"a": 1}, key="i"), TypeError, "key must be a sequence"),
        (
            dict(config={"a": 1}, key=("i",), on_mismatch="keep"),
            ValueError,
            "on_mismatch",
        ),
        (dict(config=[1], key=("i",)), TypeError, "config must be a dict"),
        (dict(config={"f": object()}, key=("i",)), TypeError, "JSON-serialisable"),
    ],
)
def test_result_file_bad_arguments(tmp_path, kwargs, err, match):
    with pytest.raises(err, match=match):
        runs.ResultFile(tmp_path / "r.jsonl", **kwargs)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="not a jbptt results file"):
        runs.ResultFile(path, {}, key=("i",))


# ------------------------------------------------------------ checkpoints ---


def test_checkpointer_keeps_latest_and_refuses_other_config(tmp_path):
    state = {"w": jnp.arange(4.0), "step": 0}
    with runs.Checkpointer(tmp_path, config={"lr": 1.0}, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(state)
        for s in range(1, 4):
            ckpt.save(s, {"w": state["w"] * s, "step": s})
        assert ckpt.latest_step() == 3
        back = ckpt.restore(state)
        assert back["step"] == 3 and isinstance(back["step"], int)
        np.testing.assert_array_equal(
            ckpt.restore(state, step=2)["w"], np.arange(4.0) * 2
        )
        with pytest.raises(ValueError, match="step must be an int"):
            ckpt.save(-1, state)
    with pytest.raises(ValueError, match=r"different configuration.*lr: 1.0 -> 0.5"):
        runs.Checkpointer(tmp_path, config={"lr": 0.5})
    with pytest.raises(ValueError, match="max_to_keep"):
        runs.Checkpointer(tmp_path / "x", max_to_keep=0)


@pytest.mark.parametrize("missing", ["orbax", "orbax.checkpoint"])
def test_checkpointer_without_orbax_names_the_extra(tmp_path, monkeypatch, missing):
    # orbax is the optional extra jbptt[runs]: simulate it not installed
    # (a None entry in sys.modules makes its import raise ImportError).
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ImportError, match=r'pip install "jbptt\[runs\]"'):
        runs.Checkpointer(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()  # refused before touching the disk
    f = runs.ResultFile(tmp_path / "r.jsonl", {"T": 8}, key=("k",))  # no orbax
    assert f.append({"k": 1}) and len(f) == 1


def test_import_jbptt_needs_no_orbax():
    # Every public module imports with orbax absent; only Checkpointer needs it.
    code = (
        "import sys; sys.modules['orbax'] = None\n"
        "import jbptt, jbptt.runs, jbptt.train, jbptt.sweep, jbptt.estimators\n"
        "assert 'orbax.checkpoint' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_online_training_resumed_from_checkpoint_matches_bitwise(tmp_path):
    # jbptt.train.train on a stream, chunk by chunk, ARTBP with a fresh key
    # per chunk; checkpoint after each chunk; "killed" after two chunks.
    from jbptt import estimators, train

    model = jbptt.readout(jbptt.cells.elman(), output_size=1)
    opt, est = optax.adam(1e-2), estimators.artbp(0.25)
    stream = jax.random.normal(jax.random.key(1), (4, 24, 2, 1))  # 4 chunks

    def init_state():
        params = model.init(jax.random.key(0), 1, 4)
        return dict(
            params=params,
            opt=opt.init(params),
            h=model.cell.initial_state(params, (2,)),
            key=jax.random.key(3),
            chunk=0,
            losses=jnp.zeros(4),
        )

    def run_chunk(state):
        key, sub = jax.random.split(state["key"])
        xs = stream[state["chunk"]]
        hist = train.train(
            model.cell,
            model.loss_fn,
            state["params"],
            xs,
            xs,
            opt,
            est,
            key=sub,
            h0=state["h"],
            opt_state=state["opt"],
        )
        losses = state["losses"].at[state["chunk"]].set(jnp.mean(hist.loss))
        return dict(
            params=hist.params,
            opt=hist.opt_state,
            h=hist.h,
            key=key,
            chunk=state["chunk"] + 1,
            losses=losses,
        )

    full = init_state()
    while full["chunk"] < 4:
        full = run_chunk(full)

    state = init_state()
    with runs.Checkpointer(tmp_path / "ckpt", config={"c": 0.25}) as ckpt:
        while state["chunk"] < 2:
            state = run_chunk(state)
            ckpt.save(state["chunk"], state)
    with runs.Checkpointer(tmp_path / "ckpt", config={"c": 0.25}) as ckpt:
        state = ckpt.restore(init_state())
    assert state["chunk"] == 2 and isinstance(state["chunk"], int)
    assert jax.dtypes.issubdtype(state["key"].dtype, jax.dtypes.prng_key)
    assert type(state["opt"]) is type(full["opt"])  # optax NamedTuples back
    while state["chunk"] < 4:
        state = run_chunk(state)

    assert state["chunk"] == full["chunk"]
    np.testing.assert_array_equal(
        jax.random.key_data(state["key"]), jax.random.key_data(full["key"])
    )
    for k in ("params", "opt", "h", "losses"):
        for a, b in zip(
            jax.tree_util.tree_leaves(state[k]),
            jax.tree_util.tree_leaves(full[k]),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------- the bias sweep, resumed ---

TINY = (
    "--quick --samples 16 --points 3 --train-steps 4 --T 8 --delays 1 3 "
    "--ks 1 2 8 --hidden 4 --batch 2 --x64 --no-progress"
).split()

# Runs the bias sweep CLI and SIGKILLs its own process right after the
# KILL_AT-th row reached the file: a hard kill in the middle of a point.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from jbptt._src import runs

    kill_at, argv = int(sys.argv[1]), sys.argv[2:]
    append, count = runs.ResultFile.append, [0]

    def append_then_die(self, row):
        written = append(self, row)
        count[0] += written
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    runs.ResultFile.append = append_then_die
    from experiments import bias_sweep
    bias_sweep.main(argv)
    """
)


def _cli(args, tmp_path, script=None):
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jc"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    cmd = (
        [sys.executable, "-c", script]
        if script
        else [sys.executable, "-m", "experiments.bias_sweep"]
    )
    return subprocess.run(
        cmd + list(map(str, args)), capture_output=True, text=True, env=env, timeout=300
    )


def test_bias_sweep_killed_and_restarted_equals_uninterrupted(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    proc = _cli(TINY + ["--out", ref], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, ref_rows = runs.read_rows(ref / "bias_sweep.jsonl")
    per_point = len(ref_rows) // 3
    kill_at = per_point + 2  # inside the second point
    proc = _cli([kill_at] + TINY + ["--out", out], tmp_path, script=KILLED_RUN)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert len(runs.read_rows(out / "bias_sweep.jsonl")[1]) == kill_at
    proc = _cli(TINY + ["--out", out], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming: {kill_at} rows" in proc.stdout
    _, rows = runs.read_rows(out / "bias_sweep.jsonl")
    keys = [(r["cell"], r["train_step"], r["estimator"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(ref_rows)  # every row exactly once
    # Equal to the uninterrupted run, bit for bit (NaN compares via JSON text).
    assert json.dumps(rows) == json.dumps(ref_rows)
    with open(out / "bias_sweep.csv") as f, open(ref / "bias_sweep.csv") as g:
        assert f.read() == g.read()
    # A changed configuration is refused, or written beside on request.
    proc = _cli(TINY + ["--out", out, "--seed", 1], tmp_path)
    assert proc.returncode == 1 and "seed: 0 -> 1" in proc.stderr


# ------------------------------------------- nothing lost, nothing wrong ---


def test_a_file_that_is_not_ours_is_refused_and_left_untouched(tmp_path):
    for text in ("a,b\n1,2\n3,4\n", "not json at all", '[1, 2]\n{"x": 1}\n'):
        path = tmp_path / "r.jsonl"
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{path} is not a jbptt results file"):
            runs.ResultFile(path, {"T": 8}, key=("i",))
        with pytest.raises(ValueError, match="not a jbptt results file"):
            runs.read_rows(path)
        assert path.read_text() == text
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(ValueError, match="is not a file"):
        runs.ResultFile(folder, {}, key=("i",))


def test_a_corrupt_middle_line_is_quarantined_and_its_neighbours_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    f = runs.ResultFile(path, {"seed": 0}, key=("i",))
    f.extend({"i": i, "x": i / 7} for i in range(5))
    lines = path.read_bytes().splitlines(keepends=True)
    bad = b'{"i": 2, "x": \xff garbage\n'
    lines[3] = bad  # line 4 of the file: the row i = 2
    path.write_bytes(b"".join(lines) + b'{"i": 9, "x"')  # and a torn last line
    with pytest.warns(RuntimeWarning, match=r"2 corrupt line\(s\) \(line 4, 7\)"):
        g = runs.ResultFile(path, {"seed": 0}, key=("i",))
    assert [r["i"] for r in g.rows()] == [0, 1, 3, 4]
    assert runs.read_rows(path)[1] == g.rows()
    side = [
        json.loads(x)
        for x in (tmp_path / "r.jsonl.corrupt").read_text().split("\n")
        if x
    ]
    assert [s["line"] for s in side] == [4, 7] and [s["torn"] for s in side] == [
        False,
        True,
    ]
    # The quarantined bytes come back exactly.
    assert side[0]["text"].encode("utf-8", "surrogateescape") == bad
    assert g.append({"i": 2, "x": 2 / 7}) and not g.append({"i": 3, "x": 0.0})
    assert sorted(r["i"] for r in runs.read_rows(path)[1]) == [0, 1, 2, 3, 4]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


_WRITER = textwrap.dedent(
    """
    import sys
    from jbptt import runs
    f = runs.ResultFile(sys.argv[1], {"seed": 3}, key=("i",))
    print("ready", flush=True)
    i = len(f)
    while True:
        f.append({"i": i, "payload": "x" * 5000})
        i += 1
    """
)


def test_killed_during_writes_loses_no_finished_row(tmp_path):
    path = tmp_path / "r.jsonl"
    for _ in range(2):  # kill, reopen (resume), kill again
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        assert proc.stdout.readline().strip() == b"ready"
        while os.path.getsize(path) < 200_000:  # ~40 rows per run
            assert proc.poll() is None, "the writer died on its own"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    f = runs.ResultFile(path, {"seed": 3}, key=("i",))
    ids = [r["i"] for r in f.rows()]
    assert ids == list(range(len(ids))) and len(ids) >= 40  # no gap, no loss
    assert all(r["payload"] == "x" * 5000 for r in f.rows())


def _flip_bytes(folder):
    # Flip bytes in the middle of the largest data file of a saved step.
    files = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]
    target = max(files, key=os.path.getsize)
    with open(target, "rb") as f:
        data = bytearray(f.read())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    with open(target, "wb") as f:
        f.write(bytes(data))


def test_checkpoint_template_mismatch_is_refused_naming_the_leaf(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3), "step": 1}
    with runs.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        with pytest.raises(
            ValueError,
            match=r"at leaf \['w'\]: saved float64\[2, 3\], template float64\[3, 2\]",
        ):
            ckpt.restore({**state, "w": jnp.zeros((3, 2))})
        with pytest.raises(
            ValueError,
            match=r"at leaf \['b'\]: saved float64\[3\], template float32\[3\]",
        ):
            ckpt.restore({**state, "b": jnp.zeros(3, jnp.float32)})
        with pytest.raises(ValueError, match="different structure"):
            ckpt.restore({"w": state["w"], "step": 1})
        with pytest.raises(ValueError, match="no complete checkpoint for step 5"):
            ckpt.restore(state, step=5)
        back = ckpt.restore(state)
        np.testing.assert_array_equal(back["w"], state["w"])


def test_corrupted_checkpoint_falls_back_to_the_newest_intact_step(tmp_path):
    state = {"w": jnp.linspace(0.0, 1.0, 4096), "key": jax.random.key(1), "step": 0}
    with runs.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for s in (1, 2):
            ckpt.save(s, {**state, "w": state["w"] * s, "step": s})
        assert ckpt.latest_step() == 2
    _flip_bytes(tmp_path / "2")
    with runs.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        assert ckpt.latest_step() == 2  # same as before reopening
        with pytest.warns(RuntimeWarning, match="step 2 .*(corrupted|unreadable)"):
            back = ckpt.restore(state)
        assert back["step"] == 1
        np.testing.assert_array_equal(back["w"], state["w"])
        with pytest.raises(ValueError, match="step 2 .*(corrupted|unreadable)"):
            ckpt.restore(state, step=2)


def test_a_step_killed_before_its_manifest_is_not_reported(tmp_path):
    state = {"w": jnp.ones(3), "step": 0}
    with runs.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {**state, "step": 1})
        ckpt.save(2, {**state, "step": 2})
    os.remove(tmp_path / "jbptt-manifests" / "2.json")  # a kill before it was written
    with runs.Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
        assert ckpt.restore(state)["step"] == 1


# ------------------------------------------- shared files: locks and moves ---

_APPENDER = textwrap.dedent(
    """
    import sys
    from jbptt import runs
    f = runs.ResultFile(sys.argv[1], {"seed": 5}, key=("i",))
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        if f.append({"i": i, "by": "A"}):
            print(i, flush=True)
    """
)


def _plant_torn_line(path):
    # A writer killed mid-line held the lock while writing: plant it so.
    from jbptt._src import durable

    with durable.locked(os.path.realpath(path)):
        with open(path, "ab") as fh:
            fh.write(b'{"i": -1, "by": "kil')


def test_an_opener_loses_no_row_of_a_concurrent_appender(tmp_path):
    path = tmp_path / "r.jsonl"
    runs.ResultFile(path, {"seed": 5}, key=("i",))
    _plant_torn_line(path)
    proc = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, str(path), "400"],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.stdout.readline().strip() == b"ready"
    opens = 0
    while proc.poll() is None or opens < 3:  # B: reopen (and rewrite) meanwhile
        runs.ResultFile(path, {"seed": 5}, key=("i",))
        _plant_torn_line(path)
        opens += 1
    confirmed = [int(x) for x in proc.stdout.read().split()]
    proc.stdout.close()
    assert proc.returncode == 0 and confirmed == list(range(400))
    _, rows = runs.read_rows(path)
    assert sorted(r["i"] for r in rows) == confirmed  # every confirmed row
    with open(f"{path}.corrupt") as fh:
        side = [json.loads(line) for line in fh]
    assert side and all(s["torn"] and s["text"].startswith('{"i": -1') for s in side)


def test_overwrite_keeps_every_earlier_file_as_a_numbered_backup(tmp_path):
    path = tmp_path / "r.jsonl"
    hashes = []
    for seed in range(4):  # 4 runs, each overwriting the one before
        f = runs.ResultFile(path, {"seed": seed}, key=("i",), on_mismatch="overwrite")
        f.append({"i": seed})
        hashes.append(f.config_hash[:10])
    for seed in range(3):  # back to seed 0 twice more
        f = runs.ResultFile(
            path, {"seed": seed % 2}, key=("i",), on_mismatch="overwrite"
        )
        assert f.replaced is not None and os.path.exists(f.replaced)
        f.append({"i": 10 + seed})
    kept = sorted(p.name for p in tmp_path.glob("r.jsonl.replaced-*"))
    assert len(kept) == 6  # one backup per overwrite, none overwritten
    rows = {
        (c["seed"], r["i"])
        for name in kept + ["r.jsonl"]
        for c, rs in [runs.read_rows(tmp_path / name)]
        for r in rs
    }
    assert {(s, s) for s in range(4)} | {(0, 10), (1, 11), (0, 12)} == rows
    assert f"r.jsonl.replaced-{hashes[0]}.1" in kept  # the second seed-0 backup


def test_a_symlinked_path_is_locked_and_rewritten_at_its_target(tmp_path):
    real = tmp_path / "data" / "r.jsonl"
    link = tmp_path / "link.jsonl"
    f = runs.ResultFile(real, {"seed": 0}, key=("i",))
    link.symlink_to(real)
    f.append({"i": 0})
    _plant_torn_line(link)
    g = runs.ResultFile(link, {"seed": 0}, key=("i",))  # rewrites the target
    assert link.is_symlink() and g.resumed == 1
    assert f.append({"i": 1}) and g.append({"i": 2})
    assert [r["i"] for r in runs.read_rows(real)[1]] == [0, 1, 2]
    h = runs.ResultFile(link, {"seed": 1}, key=("i",), on_mismatch="overwrite")
    assert link.is_symlink() and h.replaced.startswith(str(real) + ".replaced-")
    assert [r["i"] for r in runs.read_rows(h.replaced)[1]] == [0, 1, 2]
    assert (tmp_path / "data" / "r.jsonl.lock").exists()


def test_append_to_a_replaced_or_removed_file_writes_nothing(tmp_path):
    path = tmp_path / "r.jsonl"
    f = runs.ResultFile(path, {"seed": 0}, key=("i",))
    f.append({"i": 0})
    runs.ResultFile(path, {"seed": 1}, key=("i",), on_mismatch="overwrite")
    with pytest.raises(ValueError, match="no longer holds this run's results"):
        f.append({"i": 1})
    assert runs.read_rows(path)[1] == [] and not f.done({"i": 1})
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="moved or deleted since it was opened"):
        f.append({"i": 2})
    assert not path.exists()  # not recreated without its header


def test_a_torn_line_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "r.jsonl"
    f = runs.ResultFile(path, {"seed": 0}, key=("i",))
    f.append({"i": 0})
    _plant_torn_line(path)
    assert f.append({"i": 1})  # would otherwise be glued to the torn bytes
    assert [r["i"] for r in runs.read_rows(path)[1]] == [0, 1]
    side = json.loads((tmp_path / "r.jsonl.corrupt").read_text())
    assert side == {"line": 3, "text": '{"i": -1, "by": "kil', "torn": True}


def test_two_joined_files_of_other_configurations_are_refused(tmp_path):
    a, b, joined = (tmp_path / n for n in ("a.jsonl", "b.jsonl", "j.jsonl"))
    runs.ResultFile(a, {"T": 8}, key=("i",)).append({"i": 0})
    runs.ResultFile(b, {"T": 9}, key=("i",)).append({"i": 1})
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    before = joined.read_bytes()
    match = r"j.jsonl, line 3: a second header, of another configuration.*T: 8 -> 9"
    for mode in ("raise", "new", "overwrite"):
        with pytest.raises(ValueError, match=match):
            runs.ResultFile(joined, {"T": 8}, key=("i",), on_mismatch=mode)
    with pytest.raises(ValueError, match=match):
        runs.read_rows(joined)
    assert joined.read_bytes() == before  # left untouched
    same = tmp_path / "s.jsonl"  # two files of one configuration: one run
    same.write_bytes(a.read_bytes() + a.read_bytes().replace(b'"i": 0', b'"i": 2'))
    assert [r["i"] for r in runs.ResultFile(same, {"T": 8}, key=("i",)).rows()] == [
        0,
        2,
    ]


def test_rows_without_their_key_or_with_an_unhashable_key_are_named(tmp_path):
    path = tmp_path / "r.jsonl"
    f = runs.ResultFile(path, {"seed": 0}, key=("cell", "k"))
    f.append({"cell": "elman", "k": [1, 2]})  # a list is a fine key value
    assert f.done({"cell": "elman", "k": (1, 2)})
    with pytest.raises(ValueError, match=r"row passed to append.*no key field 'k'"):
        f.append({"cell": "elman"})
    with open(path, "a") as fh:
        fh.write('{"cell": "gru", "bias": 0.1}\n')
    with pytest.raises(
        ValueError, match=r"r.jsonl, line 3: the row has no key field 'k'.*'cell', 'k'"
    ):
        runs.ResultFile(path, {"seed": 0}, key=("cell", "k"))
    g = runs.ResultFile(tmp_path / "g.jsonl", {"seed": 0}, key=lambda r: {r["k"]})
    with pytest.raises(ValueError, match="row passed to append: the row's key"):
        g.append({"k": 1})


# ------------------------------------- shared checkpoint folders, damage ---


def _state(s):
    return {"w": jnp.arange(3.0) * s, "step": s}


def test_pruning_touches_only_the_steps_this_checkpointer_saved(tmp_path):
    old = runs.Checkpointer(tmp_path, config={"lr": 1.0}, max_to_keep=2)
    for s in (1, 2, 3):  # the old process keeps 2 and 3
        old.save(s, _state(s))
    new = runs.Checkpointer(tmp_path, config={"lr": 1.0}, max_to_keep=1)
    for s in (10, 11, 12):  # a restarted process, while the old one runs
        new.save(s, _state(s))
    assert new.all_steps() == [2, 3, 12]  # new pruned only 10 and 11
    old.save(4, _state(4))  # old prunes 2, its own, not 12
    assert old.all_steps() == [3, 4, 12]
    for s in (3, 4, 12):
        assert new.restore(_state(0), step=s)["step"] == s
    old.close()
    new.close()


def test_a_step_of_another_configuration_is_refused_naming_both(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with runs.Checkpointer(a, config={"lr": 1.0, "T": 8}) as ckpt:
        ckpt.save(1, _state(1))
    with runs.Checkpointer(b, config={"lr": 0.5, "T": 8}) as ckpt:
        ckpt.save(2, _state(2))
    shutil.copytree(b / "2", a / "2")  # a step copied in from another run
    shutil.copy(b / "jbptt-manifests" / "2.json", a / "jbptt-manifests" / "2.json")
    hash_a = runs.config_hash({"lr": 1.0, "T": 8})[:10]
    hash_b = runs.config_hash({"lr": 0.5, "T": 8})[:10]
    match = (
        rf"step 2 in .* another configuration \(the step's hash {hash_b}, "
        rf"this run's {hash_a}\); changed: lr: 0.5 -> 1.0"
    )
    for config in ({"lr": 1.0, "T": 8}, None):  # None: the stored config.json
        with runs.Checkpointer(a, config=config) as ckpt:
            with pytest.raises(ValueError, match=match):
                ckpt.restore(_state(0))
            with pytest.raises(ValueError, match=match):
                ckpt.restore(_state(0), step=2)
            assert ckpt.restore(_state(0), step=1)["step"] == 1
    assert (a / "2").is_dir()  # refused, not moved: it is intact


def test_a_damaged_manifest_is_named_quarantined_and_the_step_saved_again(tmp_path):
    with runs.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for s in (1, 2):
            ckpt.save(s, _state(s))
    manifest = tmp_path / "jbptt-manifests" / "2.json"
    manifest.write_text(manifest.read_text()[:30])  # truncated
    with runs.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        assert ckpt.latest_step() == 1  # only restorable steps
        with pytest.warns(RuntimeWarning, match=rf"manifest {manifest} is damaged"):
            assert ckpt.restore(_state(0))["step"] == 1
        moved = tmp_path / "jbptt-quarantine" / "step-2"
        assert (moved / "checkpoint").is_dir() and (moved / "manifest.json").exists()
        assert "is damaged" in (moved / "reason.txt").read_text()
        ckpt.save(2, _state(2))  # the step number is free again
        assert ckpt.latest_step() == 2 and ckpt.restore(_state(0))["step"] == 2
        with pytest.raises(ValueError, match="step 2 already exists"):
            ckpt.save(2, _state(2))


def test_a_corrupted_step_is_moved_aside_so_it_can_be_saved_again(tmp_path):
    with runs.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for s in (1, 2):
            ckpt.save(s, _state(s))
        _flip_bytes(tmp_path / "2")
        with pytest.warns(RuntimeWarning, match="step 2 .*(corrupted|unreadable)"):
            assert ckpt.restore(_state(0))["step"] == 1
        assert ckpt.latest_step() == 1 and not (tmp_path / "2").exists()
        assert (tmp_path / "jbptt-quarantine" / "step-2" / "checkpoint").is_dir()
        ckpt.save(2, _state(2))
        assert ckpt.restore(_state(0))["step"] == 2
        _flip_bytes(tmp_path / "2")
        with pytest.raises(ValueError, match="step 2 .*(corrupted|unreadable)"):
            ckpt.restore(_state(0), step=2)
        assert (tmp_path / "jbptt-quarantine" / "step-2.1" / "checkpoint").is_dir()


def test_damaged_orbax_metadata_falls_back_naming_the_step(tmp_path):
    with runs.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for s in (1, 2):
            ckpt.save(s, _state(s))
    for dirpath, _, names in os.walk(tmp_path / "2"):
        for name in names:
            if "METADATA" in name.upper():
                with open(os.path.join(dirpath, name), "w") as fh:
                    fh.write("{not json")
    with runs.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        with pytest.warns(RuntimeWarning, match="step 2 .*(corrupted|unreadable)"):
            assert ckpt.restore(_state(0))["step"] == 1


def test_a_damaged_config_file_is_named(tmp_path):
    runs.Checkpointer(tmp_path, config={"lr": 1.0}).close()
    (tmp_path / "config.json").write_text('{"config_hash": "ab')
    for config in ({"lr": 1.0}, None):
        with pytest.raises(ValueError, match=r"config.json is damaged \(expected JSON"):
            runs.Checkpointer(tmp_path, config=config)


def _crash_on(monkeypatch, module, name, when):
    """Make ``module.name`` raise (a kill at that system call) when ``when``."""
    real = getattr(module, name)

    def crash(*args, **kwargs):
        if when(*args):
            raise KeyboardInterrupt(f"killed at {name}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, crash)


def test_a_kill_inside_overwrite_or_quarantine_loses_nothing(tmp_path, monkeypatch):
    from jbptt._src import durable

    path = tmp_path / "r.jsonl"
    runs.ResultFile(path, {"seed": 0}, key=("i",)).extend({"i": i} for i in range(3))
    with monkeypatch.context() as m:  # killed after the backup link, before unlink
        _crash_on(m, durable.os, "unlink", lambda p, *a: str(p) == str(path))
        with pytest.raises(KeyboardInterrupt):
            runs.ResultFile(path, {"seed": 1}, key=("i",), on_mismatch="overwrite")
    backup = f"{path}.replaced-{runs.config_hash({'seed': 0})[:10]}"
    assert runs.read_rows(path)[1] == runs.read_rows(backup)[1]  # both, not neither
    f = runs.ResultFile(path, {"seed": 1}, key=("i",), on_mismatch="overwrite")
    assert f.replaced.endswith(".1") and len(runs.read_rows(f.replaced)[1]) == 3
    with monkeypatch.context() as m:  # killed before the corrupt line's rewrite
        _plant_torn_line(path)
        f.append({"i": 9})  # the torn tail is cut first
        with open(path, "ab") as fh:
            fh.write(b"damage\n" + b'{"i": 10}\n')
        _crash_on(m, durable.os, "replace", lambda src, dst: str(dst) == str(path))
        with pytest.raises(KeyboardInterrupt):  # the warning comes after
            runs.ResultFile(path, {"seed": 1}, key=("i",))
    with pytest.warns(RuntimeWarning, match="corrupt line"):
        g = runs.ResultFile(path, {"seed": 1}, key=("i",))
    assert [r["i"] for r in g.rows()] == [9, 10]
    side = [
        json.loads(x) for x in (tmp_path / "r.jsonl.corrupt").read_text().splitlines()
    ]
    assert [s["text"] for s in side if not s["torn"]] == ["damage\n", "damage\n"]


def test_a_step_killed_before_its_manifest_can_be_saved_again(tmp_path):
    with runs.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _state(1))
        ckpt.save(2, _state(2))
    os.remove(tmp_path / "jbptt-manifests" / "2.json")  # a kill before it was written
    with runs.Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        ckpt.save(2, _state(2))  # the incomplete step is moved aside quietly
        assert ckpt.restore(_state(0))["step"] == 2
    reason = tmp_path / "jbptt-quarantine" / "step-2" / "reason.txt"
    assert "has no manifest" in reason.read_text()
