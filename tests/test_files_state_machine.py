"""State machines over result files and checkpoint folders (hypothesis).

Random sequences of opens (each ``on_mismatch`` mode, same or another
configuration, through the path or a symbolic link to it), appends,
overwrites, torn writes (a writer killed mid-line) and a concurrent writer in
another process, with the invariants: every row that ``append`` confirmed is
in some result file of the folder, under the header of its own
configuration; every file the library did not write is byte for byte as it
was. For checkpoints: two ``Checkpointer`` objects (and restarts) on one
folder, saves, damaged bytes and manifests, restores, with the invariant
that no step is lost except by its own writer's ``max_to_keep``, and that a
damaged step is moved aside, never deleted, never restored.

``make test`` runs a few derandomized examples (seconds);
``JBPTT_FUZZ_EXAMPLES=300`` runs that many random ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings

import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from jbptt import runs
from jbptt._src import durable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_N = int(os.environ.get("JBPTT_FUZZ_EXAMPLES", "0"))
MODES = ("raise", "new", "overwrite")
_HASH0 = runs.config_hash({"seed": 0})[:10]


def _settings(default: int, steps: int):
    return settings(
        max_examples=_N or default,
        stateful_step_count=steps,
        deadline=None,
        derandomize=not _N,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# ------------------------------------------------------ concurrent writer ---

# A second process that, on each command, opens a result file and appends
# rows, reporting every row whose append returned True.
_WRITER = textwrap.dedent(
    """
    import json, sys
    from jbptt import runs
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            f = runs.ResultFile(cmd["path"], {"seed": cmd["seed"]}, key=("i",))
        except ValueError:
            print("refused", flush=True)
            continue
        print("started", flush=True)
        for i in range(cmd["start"], cmd["start"] + cmd["count"]):
            try:
                ok = f.append({"i": i, "seed": cmd["seed"]})
            except (ValueError, FileNotFoundError):
                break
            if ok:
                print(i, flush=True)
        print("done", flush=True)
    """
)


@pytest.fixture(scope="module")
def writer():
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)
    proc.stdout.close()


def _plant_torn_line(path: str) -> None:
    # A writer killed mid-line held the lock while writing: plant it so.
    with durable.locked(os.path.realpath(path)):
        with open(path, "ab") as fh:
            fh.write(b'{"i": -1, "seed": "kil')


class ResultFiles(RuleBasedStateMachine):
    writer: subprocess.Popen  # set by the test

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="jbptt-files-")
        self.path = os.path.join(self.dir, "r.jsonl")
        self.link = os.path.join(self.dir, "link.jsonl")
        os.symlink("r.jsonl", self.link)
        self.handles: list[runs.ResultFile] = []
        self.confirmed: set[tuple[int, int]] = set()
        self.next_i = 0
        self.foreign = {
            os.path.join(self.dir, "notes.csv"): b"a,b\n1,2\n",
            # where "overwrite" would put a seed-0 file, were it not numbered
            os.path.join(self.dir, f"r.jsonl.replaced-{_HASH0}"): b"mine\n",
        }
        for name, data in self.foreign.items():
            with open(name, "wb") as fh:
                fh.write(data)

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _open(self, seed, mode, via_link):
        target = self.link if via_link else self.path
        try:
            f = runs.ResultFile(target, {"seed": seed}, key=("i",), on_mismatch=mode)
        except ValueError as e:
            assert mode == "raise" and "different configuration" in str(e)
            return
        self.handles = [*self.handles[-3:], f]

    @rule(
        seed=st.integers(0, 2),
        mode=st.sampled_from(MODES),
        via_link=st.booleans(),
    )
    def open(self, seed, mode, via_link):
        self._open(seed, mode, via_link)

    @precondition(lambda self: self.handles)
    @rule(which=st.integers(0, 3), count=st.integers(1, 3))
    def append(self, which, count):
        f = self.handles[which % len(self.handles)]
        seed = f.config["seed"]
        for _ in range(count):
            i, self.next_i = self.next_i, self.next_i + 1
            try:
                ok = f.append({"i": i, "seed": seed})
            except ValueError as e:
                assert "no longer holds this run's results" in str(e)
                return
            except FileNotFoundError:
                return
            assert ok
            self.confirmed.add((seed, i))

    @precondition(lambda self: os.path.exists(self.path))
    @rule()
    def torn_write(self):
        _plant_torn_line(self.path)

    @rule(
        seed=st.integers(0, 2),
        mode=st.sampled_from(MODES),
        via_link=st.booleans(),
    )
    def concurrent_writer_while_opening(self, seed, mode, via_link):
        """The other process appends rows while this one opens the file
        (and so may quarantine, rewrite or move it aside)."""
        with open(self.path, "rb") if os.path.exists(self.path) else _Empty() as fh:
            header = json.loads(fh.readline() or b'{"config": {"seed": 0}}')
        theirs = header["config"]["seed"]
        start, self.next_i = self.next_i, self.next_i + 40
        command = {"path": self.path, "seed": theirs, "start": start, "count": 40}
        self.writer.stdin.write(json.dumps(command) + "\n")
        self.writer.stdin.flush()
        first = self.writer.stdout.readline().strip()
        self._open(seed, mode, via_link)
        if first == "refused":
            return
        assert first == "started", first
        for line in iter(self.writer.stdout.readline, "done\n"):
            self.confirmed.add((theirs, int(line)))

    @rule(mode=st.sampled_from(MODES))
    def open_a_file_that_is_not_ours(self, mode):
        name = os.path.join(self.dir, "notes.csv")
        try:
            runs.ResultFile(name, {"seed": 0}, key=("i",), on_mismatch=mode)
        except ValueError as e:
            assert "not a jbptt results file" in str(e)
        else:
            raise AssertionError("a foreign file was accepted")

    @invariant()
    def every_confirmed_row_survives_under_its_own_header(self):
        found = set()
        for name in os.listdir(self.dir):
            full = os.path.join(self.dir, name)
            if full in self.foreign or os.path.islink(full) or not _ours(full):
                continue
            config, rows = runs.read_rows(full)
            for row in rows:
                assert row["seed"] == config["seed"], (name, row, config)
                found.add((row["seed"], row["i"]))
        assert self.confirmed <= found, sorted(self.confirmed - found)[:5]

    @invariant()
    def files_not_ours_are_untouched(self):
        for name, data in self.foreign.items():
            with open(name, "rb") as fh:
                assert fh.read() == data, name


class _Empty:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def readline(self):
        return b""


def _ours(path: str) -> bool:
    if not os.path.isfile(path) or path.endswith((".lock", ".corrupt")):
        return False
    with open(path, "rb") as fh:
        return fh.readline().startswith(b'{"format": "jbptt-results-v1"')


def test_result_files_keep_every_confirmed_row(writer):
    ResultFiles.writer = writer
    run_state_machine_as_test(ResultFiles, settings=_settings(8, 14))


# ------------------------------------------------------------ checkpoints ---


def _state(step):
    return {"w": jnp.arange(3.0) + step, "step": step}


class CheckpointFolder(RuleBasedStateMachine):
    """Writers ``a`` (keeps 2) and ``b`` (keeps 1, restarted at times) share
    one folder; steps are damaged at random."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="jbptt-ckpt-")
        self.keep = {"a": 2, "b": 1}
        self.live = {w: self._make(w) for w in self.keep}
        self.saved: dict[str, list[int]] = {"a": [], "b": []}
        self.closed: list[int] = []  # steps of writers that were restarted
        self.damaged: set[int] = set()
        self.bad_manifest: set[int] = set()
        self.next_step = 0

    def _make(self, w):
        return runs.Checkpointer(self.dir, config={"lr": 1.0}, max_to_keep=self.keep[w])

    def teardown(self):
        for c in self.live.values():
            c.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(w=st.sampled_from(["a", "b"]))
    def save(self, w):
        step, self.next_step = self.next_step, self.next_step + 1
        self.live[w].save(step, _state(step))
        self.saved[w].append(step)

    @rule()
    def restart_b(self):
        self.live["b"].close()
        self.closed += self.saved["b"][-self.keep["b"] :]
        self.saved["b"] = []
        self.live["b"] = self._make("b")

    @rule(pick=st.integers(0, 50), how=st.sampled_from(["bytes", "manifest"]))
    def damage(self, pick, how):
        steps = [s for s in self.live["a"].all_steps() if s not in self.damaged]
        if not steps:
            return
        step = steps[pick % len(steps)]
        if how == "manifest":
            name = os.path.join(self.dir, "jbptt-manifests", f"{step}.json")
            with open(name, "r+b") as fh:
                fh.truncate(20)
            self.bad_manifest.add(step)
        else:
            _flip_largest(os.path.join(self.dir, str(step)))
        self.damaged.add(step)

    @rule(w=st.sampled_from(["a", "b"]))
    def restore_latest(self, w):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                back = self.live[w].restore(_state(0))
            except FileNotFoundError:
                back = None
        for warning in seen:  # each names a damaged step, and only those
            assert any(f"step {s} " in str(warning.message) for s in self.damaged)
        if back is not None:
            assert back["step"] not in self.damaged
            assert float(back["w"][0]) == back["step"]
            newer = {s for s in self.damaged if s > back["step"]}
        else:
            newer = set(self.damaged)
        for s in newer:  # moved aside on the way down, not deleted
            assert not os.path.exists(os.path.join(self.dir, str(s)))

    @invariant()
    def no_step_is_lost(self):
        must = set(self.closed)
        for w, steps in self.saved.items():
            must |= set(steps[-self.keep[w] :])
        quarantine = os.path.join(self.dir, "jbptt-quarantine")
        moved = {
            int(name.split("-")[1].split(".")[0])
            for name in (os.listdir(quarantine) if os.path.isdir(quarantine) else ())
        }
        on_disk = {int(n) for n in os.listdir(self.dir) if n.isdigit()}
        assert must <= on_disk | moved, sorted(must - on_disk - moved)
        assert moved <= self.damaged  # only damaged steps are moved aside
        # and never deleted, unless its own writer pruned it (max_to_keep)
        prunable = {s for w, ss in self.saved.items() for s in ss[: -self.keep[w]]}
        assert self.damaged <= on_disk | moved | prunable

    @invariant()
    def latest_step_is_complete(self):
        steps = self.live["a"].all_steps()
        assert not self.bad_manifest & set(steps)
        assert self.live["b"].latest_step() == (steps[-1] if steps else None)
        for s in steps:
            manifest = os.path.join(self.dir, "jbptt-manifests", f"{s}.json")
            with open(manifest) as fh:
                assert json.load(fh)["step"] == s


def _flip_largest(folder):
    files = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]
    target = max(files, key=os.path.getsize)
    with open(target, "r+b") as fh:
        data = bytearray(fh.read())
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 8)):
            data[i] ^= 0xFF
        fh.seek(0)
        fh.write(bytes(data))


def test_checkpoint_folders_lose_no_step():
    run_state_machine_as_test(CheckpointFolder, settings=_settings(5, 12))
