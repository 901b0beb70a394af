"""Two processes joined by ``jax.distributed`` give the numbers of one
process with two host devices, and an experiment CLI run on both writes its
files once, from process 0, resuming what process 0 had written.

Each process of the pair holds one CPU device; they meet at a coordinator on
the loopback and run their collectives over gloo. The same script runs once
more in a single process that holds two host devices. Every output is
compared bit for bit: the rows of a sweep are computed independently and
gathered, and a data-parallel gradient is a sum of two per-device parts, the
same two addends in either order, so no rounding can differ.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import char_lm_numbers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".pytest_cache", "jax-compilation")
TIMEOUT = 240  # seconds per process: a hang fails the test instead

# argv: "single DIR", or "multi PROCESS_ID PORT DIR" (DIR: checkpoints).
# Prints one JSON line of hex digests of every output (replicated outputs,
# and split ones gathered).
SCRIPT = r"""
import hashlib, json, sys
import jax

if sys.argv[1] == "multi":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[3]}", num_processes=2,
                               process_id=int(sys.argv[2]))
jax.config.update("jax_enable_x64", True)

import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

import jbptt
from jbptt import estimators, runs, sharding, sweep, train, truncation

def host(x):
    # Every leaf on this host, whole: split leaves are gathered first.
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if not a.is_fully_replicated:
                a = multihost_utils.process_allgather(a, tiled=True)
        return np.asarray(a)
    return jax.tree_util.tree_map(one, x)

def digest(tree):
    h = hashlib.sha256()
    for a in jax.tree_util.tree_leaves(host(tree)):
        h.update(str((a.dtype, a.shape)).encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

out = {"processes": jax.process_count(), "devices": jax.device_count(),
       "local": jax.local_device_count()}
mesh = sharding.make_mesh()
model = jbptt.readout(jbptt.cells.elman(), output_size=2)
p = model.init(jax.random.key(0), 3, 5)
xs = jax.random.normal(jax.random.key(1), (24, 4, 3))
ys = jax.random.normal(jax.random.key(2), (24, 4, 2))
h0 = model.cell.initial_state(p, (4,))

# 1. The sweep engine: estimator configurations x samples split over the mesh.
es = [estimators.full(), estimators.tbptt(3), estimators.artbp(0.3)]
run = sweep.make_sweep(model.cell, model.loss_fn, es, 8, chunk=4, mesh=mesh)
g, stats = run(p, h0, xs, ys, jax.random.key(9))
out["sweep"] = digest((g, stats))
out["sweep_rel_bias"] = host(stats["rel_bias"]).tolist()

# 2. Online training, data parallel, fed in two chunks: TBPTT through
# train.train(state=), ARTBP through Trainer.run.
opt = optax.adam(1e-2)
a = train.train(model.cell, model.loss_fn, p, xs[:13], ys[:13], opt,
                estimators.tbptt(4), flush=False, mesh=mesh)
b = train.train(model.cell, model.loss_fn, None, xs[13:], ys[13:], opt,
                estimators.tbptt(4), state=a.state, mesh=mesh)
out["tbptt"] = digest((b.params, b.opt_state, b.h, a.loss, b.loss, b.step_loss))
out["tbptt_segments"] = a.length.tolist() + b.length.tolist()
tr = train.Trainer(model.cell, model.loss_fn, opt, estimators.artbp_matched(5),
                   buckets=train.Buckets(max_buckets=2), mesh=mesh)
state = tr.init(p, jax.random.key(3))
state, c = tr.run(state, xs[:11], ys[:11], flush=False)
state, d = tr.run(state, xs[11:], ys[11:])
out["artbp"] = digest((d.params, d.opt_state, d.h, c.loss, d.loss, d.step_loss))

# Killed after the first chunk and resumed: process 0 alone saves the state
# (gathered whole on every process), every process restores it and goes on.
def whole(tree):
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if not a.is_fully_replicated:
                return multihost_utils.process_allgather(a, tiled=True)
        return a
    return jax.tree_util.tree_map(one, tree)

saved = whole(c.state)
if jax.process_index() == 0:
    with runs.Checkpointer(sys.argv[-1]) as ckpt:
        ckpt.save(11, saved)
multihost_utils.sync_global_devices("saved") if jax.process_count() > 1 else None
with runs.Checkpointer(sys.argv[-1]) as ckpt:
    back = ckpt.restore(saved)
_, e = tr.run(back, xs[11:], ys[11:])
out["artbp_resumed"] = digest((e.params, e.opt_state, e.h, c.loss, e.loss, e.step_loss))
# No shared disk: each process has a folder of its own, only process 0's
# holds the checkpoint, and process 0 sends it to the others.
own_dir = f"{sys.argv[-1]}-own-{jax.process_index()}"
if jax.process_index() == 0:
    with runs.Checkpointer(own_dir) as ckpt:
        ckpt.save(11, saved)
sent = runs.Checkpointer.restore_from_process_0(own_dir, saved)
_, e = tr.run(sent, xs[11:], ys[11:])
out["artbp_sent"] = digest((e.params, e.opt_state, e.h, c.loss, e.loss, e.step_loss))
out["artbp_segments"] = c.length.tolist() + d.length.tolist()
# Each segment is placed without device_put's all-gather of its data: the
# trainer compares one digest per call instead, and names who differs.
other = xs[:11] + (jax.process_index() == 1)
try:
    tr.run(tr.init(p, jax.random.key(3)), other, ys[:11])
    out["other_data"] = None
except ValueError as err:
    out["other_data"] = str(err)
out["train_devices"] = len(jax.tree_util.tree_leaves(d.h)[0].sharding.device_set)

# 3. grads_for_weights on a batch split over the mesh: one forward, K reverse
# scans, per-device gradients summed across the mesh.
ws = jnp.stack([truncation.tbptt(24, k) for k in (1, 3, 24)])
gw = jax.jit(lambda *args: jbptt.grads_for_weights(model.cell, model.loss_fn, *args))
res = gw(sharding.replicate(p, mesh), sharding.split_batch(h0, mesh),
         sharding.split_batch(xs, mesh, axis=1),
         sharding.split_batch(ys, mesh, axis=1), sharding.replicate(ws, mesh))
out["grads_for_weights"] = digest(res)
# The same, each process holding only its own streams (its shard of h0, xs
# and ys), assembled into global arrays without the others' data.
mine = slice(2 * jax.process_index(), 2 * jax.process_index() + 2)
if jax.process_count() == 1:
    mine = slice(None)

def own(a, axis):
    spec = jax.sharding.PartitionSpec(*([None] * axis), mesh.axis_names[0])
    local = np.asarray(a)[(slice(None),) * axis + (mine,)]
    return jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, spec), local, a.shape)

out["grads_for_weights_own"] = digest(gw(sharding.replicate(p, mesh), own(h0, 0),
                                         own(xs, 1), own(ys, 1),
                                         sharding.replicate(ws, mesh)))
out["grads_for_weights_norm"] = float(jnp.linalg.norm(
    jax.flatten_util.ravel_pytree(host(res[1]))[0]))
print(json.dumps(out), flush=True)
jax.distributed.shutdown() if jax.process_count() > 1 else None
"""


def _env(n_host_devices: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    cache = os.environ.get("JBPTT_TEST_CACHE", CACHE)
    if cache:  # the suite's persistent compilation cache (conftest.py)
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    # conftest's compile flags are kept; the device count is set here
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if n_host_devices:
        flags.append(f"--xla_force_host_platform_device_count={n_host_devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pair(tmp_path, command, script: str):
    """Start processes 0 and 1 of a job, ``command(i, port, *head)`` run
    through ``python -c script``, their output in ``killed{i}.log``; the
    processes and the open logs."""
    port, logs, procs = free_port(), [], []
    for i in (0, 1):
        logs.append(open(tmp_path / f"killed{i}.log", "w+"))  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                command(i, port, sys.executable, "-c", script),
                cwd=ROOT,
                env=_env(None),
                stdout=logs[i],
                stderr=subprocess.STDOUT,
            )
        )
    return procs, logs


def kill_pair(procs) -> None:
    """SIGKILL both processes, mid-run: process 1 first, waiting in a
    collective for process 0; then process 0, asleep (so neither can end on
    its own in between)."""
    assert all(p.poll() is None for p in procs)  # both mid-run
    for p in procs[::-1]:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=TIMEOUT)
        assert p.returncode == -signal.SIGKILL


def end_pair(procs, logs) -> None:
    """Whatever happened: no process left running, every log closed."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for log in logs:
        log.close()


def run_processes(commands: list[list[str]], env: dict, cwd=ROOT) -> list[str]:
    """Run ``commands`` together, each under ``TIMEOUT``; their stdouts. A
    process that fails or hangs ends the others and fails the test."""
    procs = [
        subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for cmd in commands
    ]
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, f"{proc.args[3:]}: {stderr[-3000:]}"
            outs.append(stdout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outs


def test_two_processes_equal_one_process_with_two_devices(tmp_path):
    port, ckpt = str(free_port()), str(tmp_path / "multi")
    multi = [
        [sys.executable, "-c", SCRIPT, "multi", str(i), port, ckpt] for i in (0, 1)
    ]
    single = [sys.executable, "-c", SCRIPT, "single", str(tmp_path / "single")]
    outs = run_processes(multi, _env(None))
    (ref_out,) = run_processes([single], _env(2))
    ref = json.loads(ref_out.strip().splitlines()[-1])
    p0, p1 = (json.loads(o.strip().splitlines()[-1]) for o in outs)
    assert ref["processes"] == 1 and ref["devices"] == ref["local"] == 2
    for p in (p0, p1):
        assert p["processes"] == 2 and p["devices"] == 2 and p["local"] == 1
        assert p["train_devices"] == 2  # the final state stays split
        for name in ("sweep", "tbptt", "artbp", "grads_for_weights"):
            assert p[name] == ref[name], name  # bitwise
        assert p["artbp_resumed"] == p["artbp_sent"] == p["artbp"]
        assert p["grads_for_weights_own"] == p["grads_for_weights"]
        assert p["other_data"].startswith("xs, ys: processes [1] hold other")
        assert p == ref | {"processes": 2, "local": 1, "other_data": p["other_data"]}
    assert ref["other_data"] is None  # one process: nothing to compare
    assert ref["sweep_rel_bias"][0] < 1e-12 < 1e-3 < ref["sweep_rel_bias"][1]
    assert len(ref["artbp_segments"]) > 2 and ref["grads_for_weights_norm"] > 0
    assert os.listdir(tmp_path / "multi")  # written by process 0
    assert os.listdir(tmp_path / "multi-own-0")
    assert not (tmp_path / "multi-own-1").exists()  # process 1: no disk


BIAS_SWEEP = [sys.executable, "-m", "experiments.bias_sweep", "--quick"]
BIAS_SWEEP += ["--no-progress"]


@pytest.fixture(scope="module")
def bias_sweep_reference(tmp_path_factory):
    """The folder of the quick bias sweep run whole on one process with two
    host devices: what every two-process run below must reproduce."""
    ref = tmp_path_factory.mktemp("bias_sweep_reference")
    run_processes([[*BIAS_SWEEP, "--devices", "2", "--out", str(ref)]], _env(2))
    return ref


def _same_outputs(out, ref) -> None:
    """The CSV of ``out`` is ``ref``'s byte for byte, and its JSON too less
    the wall-clock and ``--out``."""
    assert (out / "bias_sweep.csv").read_bytes() == (
        ref / "bias_sweep.csv"
    ).read_bytes()
    meta_ref, meta_out = (
        json.loads((d / "bias_sweep.json").read_text()) for d in (ref, out)
    )  # fmt: skip
    for meta in (meta_ref, meta_out):
        for field in ("utc_time", "wall_time_s"):
            meta.pop(field)
        meta["config"].pop("out")
    assert meta_out == meta_ref


@pytest.mark.xdist_group("bias_sweep_reference")
def test_bias_sweep_on_two_processes_resumes_and_writes_once(
    tmp_path, bias_sweep_reference
):
    """The quick bias sweep on one process with two host devices, then on
    two processes resuming from a result file that holds the first point's
    rows and a torn line: what a job killed on any process leaves, since
    only process 0 writes. Same CSV, same JSON (less times and --out),
    every row once, written by process 0 alone."""
    ref, two = bias_sweep_reference, tmp_path / "two"
    two.mkdir()
    lines = (ref / "bias_sweep.jsonl").read_text().splitlines(keepends=True)
    first = [ln for ln in lines[1:] if json.loads(ln)["train_step"] == 0]
    later = [ln for ln in lines[1:] if ln not in first]
    assert first and later
    (two / "bias_sweep.jsonl").write_text(lines[0] + "".join(first) + later[0][:40])
    port = str(free_port())
    flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    flags += ["--out", str(two)]
    out0, out1 = run_processes(
        [[*BIAS_SWEEP, *flags, "--process-id", str(i)] for i in (0, 1)], _env(None)
    )
    for out, i in ((out0, 0), (out1, 1)):
        assert f"process {i} of 2: 1 local device(s), 2 in all" in out
        assert f"resuming: {len(first)} rows already in" in out
    assert "wrote:" in out0 and "wrote:" not in out1
    _same_outputs(two, ref)
    rows = (two / "bias_sweep.jsonl").read_text().splitlines(keepends=True)
    assert sorted(rows) == sorted(lines)  # each row once, the torn line moved
    assert "torn" in (two / "bias_sweep.jsonl.corrupt").read_text()
    assert sorted(os.listdir(two)) == sorted(
        os.listdir(ref) + ["bias_sweep.jsonl.corrupt"]
    )


# The bias sweep's command line as run by ``python -m``, with one change that
# only pins the moment of the kill: process 0 stops (sleeps) right after its
# first point's rows are in the result file, so the test kills a job that is
# certainly mid-run, every time.
PAUSED = r"""
import runpy, sys, time
from jbptt._src import runs

extend = runs.ResultFile.extend

def extend_then_stop(self, rows):
    n = extend(self, rows)
    if self.writes:  # process 0, its rows confirmed: wait to be killed
        time.sleep(TIMEOUT)
    return n

runs.ResultFile.extend = extend_then_stop
sys.argv[0] = "bias_sweep"
runpy.run_module("experiments.bias_sweep", run_name="__main__", alter_sys=True)
""".replace("TIMEOUT", str(TIMEOUT))


def _rows_in(path) -> int:
    """Complete rows (lines after the header) in a result file, 0 if none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return max(0, data.count(b"\n") - 1)


@pytest.mark.xdist_group("bias_sweep_reference")
def test_bias_sweep_killed_on_two_processes_resumes_to_the_same_output(
    tmp_path, bias_sweep_reference
):
    """A live two-process quick bias sweep, each process with its own
    --out (no shared disk), is SIGKILLed mid-run once process 0 has
    confirmed the first point's rows: process 1, then process 0.
    Started again, both resume from what process 0 confirmed, process 1
    from process 0's word and not from its own folder (which holds a
    decoy: a whole run's rows), and the output is an uninterrupted run's."""
    ref = bias_sweep_reference
    lines = (ref / "bias_sweep.jsonl").read_text().splitlines(keepends=True)
    first = [ln for ln in lines[1:] if json.loads(ln)["train_step"] == 0]
    assert 0 < len(first) < len(lines) - 1
    outs = [tmp_path / "p0", tmp_path / "p1"]
    result = outs[0] / "bias_sweep.jsonl"

    def command(i, port, *head):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        flags += ["--process-id", str(i), "--out", str(outs[i])]
        return [*head, *BIAS_SWEEP[3:], *flags]

    procs, logs = start_pair(tmp_path, command, PAUSED)
    try:
        deadline = time.monotonic() + TIMEOUT
        while _rows_in(result) < len(first):  # poll process 0's file
            alive = all(p.poll() is None for p in procs)
            if not alive or time.monotonic() > deadline:
                logs[0].seek(0), logs[1].seek(0)
                pytest.fail(
                    "the job ended or hung before its first point: "
                    f"{logs[0].read()[-2000:]}\n{logs[1].read()[-2000:]}"
                )
            time.sleep(0.05)
        kill_pair(procs)
    finally:
        end_pair(procs, logs)
    confirmed = result.read_text().splitlines(keepends=True)
    assert sorted(confirmed[1:]) == sorted(first)  # the first point, no more
    assert not (outs[0] / "bias_sweep.csv").exists()
    assert not outs[1].exists()  # process 1 wrote nothing
    # Process 1's own disk: a decoy it must not read (the whole run's rows:
    # trusted, they would make it skip every point and leave process 0 alone
    # in its collectives).
    outs[1].mkdir()
    decoy = outs[1] / "bias_sweep.jsonl"
    decoy.write_text("".join(lines))
    port = free_port()
    out0, out1 = run_processes(
        [
            command(i, port, sys.executable, "-m", "experiments.bias_sweep")
            for i in (0, 1)
        ],
        _env(None),
    )
    for out in (out0, out1):
        assert f"resuming: {len(first)} rows already in {result}" in out
    assert "wrote:" in out0 and "wrote:" not in out1
    _same_outputs(outs[0], ref)
    rows = result.read_text().splitlines(keepends=True)
    assert sorted(rows) == sorted(lines)  # each row once
    assert sorted(os.listdir(outs[0])) == sorted(os.listdir(ref))
    assert os.listdir(outs[1]) == ["bias_sweep.jsonl"]
    assert decoy.read_text() == "".join(lines)  # untouched


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--coordinator", "node0"], {}, "argument --coordinator: expected HOST:PORT"),
        (
            ["--coordinator", "127.0.0.1:1234", "--num-processes", "2"],
            {},
            "missing --process-id (or add --distributed",
        ),
        (
            ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
            {},
            "--process-id must be < --num-processes = 2, got 2",
        ),
        (
            ["--coordinator", "h:1", "--process-id", "0"],
            {"JBPTT_NUM_PROCESSES": "two"},
            "JBPTT_NUM_PROCESSES (the default of --num-processes): expected an "
            "integer, got 'two'",
        ),
        (["--num-processes", "0"], {}, "argument --num-processes: expected an"),
    ],
)
def test_bad_distributed_flags(argv, env, message, monkeypatch, capsys):
    from experiments import bias_sweep

    for var in ("JBPTT_COORDINATOR", "JBPTT_NUM_PROCESSES", "JBPTT_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exc:
        bias_sweep.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_no_distributed_flags_leave_the_config_as_before():
    from experiments import bias_sweep

    args = bias_sweep.parse_args([])
    for dest in ("coordinator", "num_processes", "process_id", "distributed"):
        assert not hasattr(args, dest)  # not part of the hashed configuration
    assert args.devices is None


def test_result_file_on_a_process_other_than_0_mirrors_and_writes_nothing(
    tmp_path, monkeypatch
):
    """What process 1 of a two-process job does with a ResultFile, with the
    broadcast from process 0 stood in for: it takes process 0's rows, skips
    them, and writes nothing, not even the folder."""
    from jbptt._src import processes
    from jbptt._src import runs as runs_src

    sent = []

    def broadcast(obj, is_source):
        assert not is_source
        return sent.pop(0)

    monkeypatch.setattr(processes, "group", lambda: (1, 2))
    monkeypatch.setattr(
        processes, "broadcast", lambda obj, src, default=None: broadcast(obj, src)
    )
    path = tmp_path / "out" / "rows.jsonl"
    sent.append({"path": str(path), "replaced": None, "rows": [{"k": 1, "x": 0.5}]})
    f = runs_src.ResultFile(path, {"T": 8}, key=("k",))
    assert not f.writes and f.resumed == 1 and f.done({"k": 1})
    assert f.append({"k": 2, "x": 1.0}) and not f.append({"k": 2, "x": 1.0})
    assert [r["k"] for r in f.rows()] == [1, 2]
    assert not (tmp_path / "out").exists()
    sent.append({"error": "ValueError: another configuration"})
    with pytest.raises(ValueError, match="process 0 could not open .*another conf"):
        runs_src.ResultFile(path, {"T": 9}, key=("k",))


def test_result_file_on_process_0_writes_and_sends_its_rows(tmp_path, monkeypatch):
    from jbptt._src import processes
    from jbptt._src import runs as runs_src

    sent = []
    monkeypatch.setattr(processes, "group", lambda: (0, 2))
    monkeypatch.setattr(
        processes, "broadcast", lambda obj, src, default=None: sent.append(obj)
    )
    path = tmp_path / "rows.jsonl"
    f = runs_src.ResultFile(path, {"T": 8}, key=("k",))
    assert f.writes and f.append({"k": 1, "x": 0.5})
    again = runs_src.ResultFile(path, {"T": 8}, key=("k",))
    assert again.resumed == 1
    assert sent[-1] == {
        "path": str(path),
        "replaced": None,
        "rows": [{"k": 1, "x": 0.5}],
    }
    with pytest.raises(ValueError, match="different configuration"):
        runs_src.ResultFile(path, {"T": 9}, key=("k",))
    assert (
        sent[-1]["error"].startswith("ValueError: ")
        and "T: 8 -> 9" in sent[-1]["error"]
    )


CHAR_LM = [sys.executable, "-m", "experiments.char_lm", "--quick", "--seeds", "1"]
CHAR_LM += ["--steps", "160", "--eval-every", "80", "--max-chars", "20000"]


def test_char_lm_on_two_processes_equals_one_process_with_two_devices(tmp_path):
    """The quick char LM, each run's streams split over 2 devices: on one
    process holding both, and on two processes with an --out folder each
    (no shared disk). The same CSV and JSON bit for bit (times aside),
    written by process 0 alone."""
    ref, outs = tmp_path / "ref", [tmp_path / "p0", tmp_path / "p1"]
    run_processes([[*CHAR_LM, "--devices", "2", "--out", str(ref)]], _env(2))
    flags = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    out0, out1 = run_processes(
        [
            [*CHAR_LM, *flags, "--process-id", str(i), "--out", str(outs[i])]
            for i in (0, 1)
        ],
        _env(None),
    )
    for out, i in ((out0, 0), (out1, 1)):
        assert f"process {i} of 2: 1 local device(s), 2 in all" in out
        assert "LSTM TBPTT(k=8)            seed 0: valid bpc" in out
    assert "wrote:" in out0 and "wrote:" not in out1
    assert not outs[1].exists()  # process 1 writes nothing, not even --out
    assert sorted(os.listdir(outs[0])) == sorted(os.listdir(ref))
    (rows, meta), (ref_rows, ref_meta) = map(char_lm_numbers, (outs[0], ref))
    assert rows == ref_rows and meta == ref_meta
    assert meta["config"]["devices"] == 2 and len(meta["summary"]) == 2
    tb = meta["summary"][0]
    assert tb["final_valid_bpc"] < tb["initial_valid_bpc"]  # it trained


def test_char_lm_processes_reading_other_text_stop_with_an_error(tmp_path):
    """Processes that load different characters (here another --max-chars)
    would train on different data and stall in a collective: every process
    stops at once, saying which differ."""
    flags = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    procs = [
        subprocess.Popen(
            [
                *CHAR_LM[:-1],
                str(chars),
                *flags,
                "--process-id",
                str(i),
                "--out",
                str(tmp_path / str(i)),
            ],
            cwd=ROOT,
            env=_env(None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, chars in ((0, 20000), (1, 21000))
    ]
    try:
        errs = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 1, err[-2000:]
        assert "error: process(es) [1] read other characters than process 0" in err
    assert not any((tmp_path / str(i)).exists() for i in (0, 1))


# The char LM's command line as run by ``python -m``, with one change that
# only pins the moment of the kill: process 0 (the one that saves) stops
# (sleeps) right after its first checkpoint of the ARTBP run, part-way
# through it, the TBPTT run being done; it says so on stdout.
CHAR_LM_PAUSED = r"""
import runpy, sys, time
from jbptt import runs

save = runs.Checkpointer.save

def save_then_stop(self, step, state):
    save(self, step, state)
    if "-artbp-" in self.directory:
        print(f"saved step {step}", flush=True)
        time.sleep(TIMEOUT)

runs.Checkpointer.save = save_then_stop
sys.argv[0] = "char_lm"
runpy.run_module("experiments.char_lm", run_name="__main__", alter_sys=True)
""".replace("TIMEOUT", str(TIMEOUT))


def test_char_lm_killed_on_two_processes_resumes_to_the_same_output(tmp_path):
    """A live two-process quick char LM, each process with its own --out (no
    shared disk), is SIGKILLed once process 0 has saved a checkpoint part-way
    through its second run: process 1, then process 0. Started again, both
    processes resume from process 0's checkpoints (the first run done, the
    second from its step), and the CSV and JSON are those of an
    uninterrupted run on one process with two devices, bit for bit (times
    aside), written by process 0 alone."""
    argv = [*CHAR_LM[3:], "--checkpoint-every", "40"]
    ref, outs = tmp_path / "ref", [tmp_path / "p0", tmp_path / "p1"]
    # the uninterrupted run, alongside the others (it shares nothing with them)
    ref_log = open(tmp_path / "ref.log", "w+")  # noqa: SIM115
    uninterrupted = subprocess.Popen(
        [*CHAR_LM[:3], *argv, "--devices", "2", "--out", str(ref)],
        cwd=ROOT,
        env=_env(2),
        stdout=ref_log,
        stderr=subprocess.STDOUT,
    )
    try:
        _char_lm_kill_and_resume(tmp_path, argv, outs)
        uninterrupted.wait(timeout=TIMEOUT)
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
        ref_log.seek(0)
        ref_out = ref_log.read()
        ref_log.close()
    assert uninterrupted.returncode == 0, ref_out[-3000:]
    assert sorted(os.listdir(outs[0])) == sorted(os.listdir(ref))
    assert char_lm_numbers(outs[0]) == char_lm_numbers(ref)


def _char_lm_kill_and_resume(tmp_path, argv, outs) -> None:
    """The two-process char LM of ``argv``, killed after process 0's first
    checkpoint of its ARTBP run and started again; checks what each run did
    and wrote."""

    def command(i, port, *head):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        return [*head, *argv, *flags, "--process-id", str(i), "--out", str(outs[i])]

    procs, logs = start_pair(tmp_path, command, CHAR_LM_PAUSED)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "saved step" not in (tmp_path / "killed0.log").read_text():
            if not all(p.poll() is None for p in procs) or time.monotonic() > deadline:
                logs[0].seek(0), logs[1].seek(0)
                pytest.fail(
                    "the job ended or hung before its checkpoint: "
                    f"{logs[0].read()[-2000:]}\n{logs[1].read()[-2000:]}"
                )
            time.sleep(0.05)
        kill_pair(procs)
    finally:
        end_pair(procs, logs)
    killed = (tmp_path / "killed0.log").read_text()
    step = int(killed.split("saved step ")[1].split()[0])
    assert 40 <= step < 160  # part-way through the ARTBP run
    assert not (outs[0] / "char_lm.csv").exists()
    assert not outs[1].exists()  # process 1 wrote nothing
    port = free_port()
    out0, out1 = run_processes(
        [command(i, port, sys.executable, "-m", "experiments.char_lm") for i in (0, 1)],
        _env(None),
    )
    for out in (out0, out1):
        assert "LSTM TBPTT(k=8) seed 0: done at step 160 of 160" in out
        assert f"LSTM ARTBP(L0=8, a=4) seed 0: resuming at step {step} of 160" in out
    assert "wrote:" in out0 and "wrote:" not in out1
    assert not outs[1].exists()  # process 1 read process 0's checkpoints


def test_broadcast_arrays_keeps_every_dtype_and_shape_bit_for_bit():
    """The bytes of every leaf travel as they are: a float64 NaN payload,
    bools, PRNG key words, 0-d, empty and non-contiguous arrays."""
    from jbptt._src import processes

    f = np.array([1.0 / 3.0, np.nan, -0.0], np.float64)
    tree = {
        "f": f,
        "b": np.array([[True, False]]),
        "k": np.array([7, 2**32 - 1], np.uint32),
        "s": np.int64(-5),
        "e": np.zeros((0, 3), np.float32),
        "t": np.arange(6.0).reshape(2, 3).T,
    }
    back = processes.broadcast_arrays(tree, True)
    assert set(back) == set(tree)
    for name, a in tree.items():
        assert back[name].dtype == np.asarray(a).dtype, name
        assert back[name].shape == np.shape(a), name
        assert back[name].tobytes() == np.ascontiguousarray(a).tobytes(), name


def test_restore_from_process_0_on_another_process_reads_no_disk(tmp_path, monkeypatch):
    """What process 1 does, with process 0's messages stood in for: it
    takes the state process 0 sent, bit for bit, or raises process 0's
    error, and never opens its own folder (not even to create it)."""
    import jax

    from jbptt import runs
    from jbptt._src import processes

    template = {"w": np.zeros(3), "key": jax.random.key(0), "step": 0}
    sent_state = {"w": np.array([0.5, -1.0, 2.0]), "step": np.array(7)}
    sent_state["key"] = np.asarray(jax.random.key_data(jax.random.key(4)))
    messages = []
    monkeypatch.setattr(processes, "group", lambda: (1, 2))
    monkeypatch.setattr(
        processes, "broadcast", lambda obj, src, default=None: messages.pop(0)
    )
    monkeypatch.setattr(processes, "broadcast_arrays", lambda tree, src: sent_state)
    mine = tmp_path / "p1"
    messages.append({"error": None})
    got = runs.Checkpointer.restore_from_process_0(mine, template)
    assert got["step"] == 7 and isinstance(got["step"], int)
    np.testing.assert_array_equal(got["w"], sent_state["w"])
    assert jax.random.key_data(got["key"]).tolist() == sent_state["key"].tolist()
    messages.append({"error": "FileNotFoundError", "why": "no checkpoint in /p0."})
    with pytest.raises(FileNotFoundError, match="process 0 could not restore: no "):
        runs.Checkpointer.restore_from_process_0(mine, template)
    messages.append({"error": "ValueError", "why": "template does not match"})
    with pytest.raises(ValueError, match="process 0 could not restore: template"):
        runs.Checkpointer.restore_from_process_0(mine, template)
    assert not mine.exists()


def test_restore_from_process_0_on_process_0_sends_its_state_or_error(
    tmp_path, monkeypatch
):
    import jax

    from jbptt import runs
    from jbptt._src import processes

    state = {"w": np.array([0.5, -1.0]), "key": jax.random.key(4), "step": 3}
    with runs.Checkpointer(tmp_path / "p0") as ckpt:
        ckpt.save(3, state)
    sent = []
    monkeypatch.setattr(processes, "group", lambda: (0, 2))
    monkeypatch.setattr(
        processes, "broadcast", lambda obj, src, default=None: sent.append(obj)
    )
    monkeypatch.setattr(
        processes, "broadcast_arrays", lambda tree, src: sent.append(tree) or tree
    )
    got = runs.Checkpointer.restore_from_process_0(tmp_path / "p0", state)
    assert got["step"] == 3 and sent[0] == {"error": None}
    np.testing.assert_array_equal(sent[1]["w"], state["w"])
    np.testing.assert_array_equal(got["w"], state["w"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        runs.Checkpointer.restore_from_process_0(tmp_path / "empty", state)
    assert sent[-1]["error"] == "FileNotFoundError"
    with pytest.raises(ValueError, match="template does not match"):
        runs.Checkpointer.restore_from_process_0(
            tmp_path / "p0", {**state, "w": np.zeros(5)}
        )
    assert sent[-1]["error"] == "ValueError"
