"""Resumable runs: append-only result files and training checkpoints.

**Result files** (:class:`ResultFile`) are JSON lines. The first line is a
header holding the run's configuration and its hash (SHA-256 of the
canonical JSON); every other line is one finished row. A row is written with
a single ``write`` on a file opened for appending, then flushed and
``fsync``-ed, so a run killed at any moment leaves every earlier row intact
and at most one torn last line, which is dropped (and cut off the file) when
the file is opened again. Reopening with the same configuration resumes:
rows already there are skipped by key. A different configuration is refused
with a message saying what changed, or, if asked, written to a sibling file
named after the new hash.

**Checkpoints** (:class:`Checkpointer`) save and restore any pytree of
training state (params, optimizer state, hidden state, PRNG key, step) with
``orbax.checkpoint``; arrays round-trip bit for bit, so a resumed run
matches an uninterrupted one exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

MISMATCH = ("raise", "new", "overwrite")
_FORMAT = "jbptt-results-v1"


# ------------------------------------------------------------ config hash ---


def _jsonable(obj):
    if isinstance(obj, np.generic | np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(
        f"config values must be JSON-serialisable (numbers, strings, lists, "
        f"dicts, arrays); got {type(obj).__name__}: {obj!r}."
    )


def canonical(config: dict) -> dict:
    """``config`` as plain JSON values (tuples to lists, arrays to lists)."""
    return json.loads(json.dumps(config, sort_keys=True, default=_jsonable))


def config_hash(config: dict) -> str:
    """SHA-256 hex digest of the canonical JSON of ``config``.

    Key order, tuples versus lists and numpy versus Python scalars do not
    change the hash; any value does.

    Examples:
      >>> from jbptt import runs
      >>> runs.config_hash({"T": 16, "ks": (1, 2)}) == runs.config_hash(
      ...     {"ks": [1, 2], "T": 16})
      True
      >>> runs.config_hash({"T": 16}) == runs.config_hash({"T": 17})
      False
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}.")
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [
        f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
        for k in keys
        if old.get(k, "<absent>") != new.get(k, "<absent>")
    ]
    return "; ".join(parts) or "(values differ only in representation)"


# ----------------------------------------------------------- result file ---


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _append_line(path: str, obj: dict) -> None:
    """One ``write`` of one JSON line, then flush to disk."""
    data = (json.dumps(obj, default=_jsonable, allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # short writes are rare but legal
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: str) -> tuple[list[dict], int]:
    """Parsed lines and the byte length of the intact prefix of the file."""
    with open(path, "rb") as f:
        data = f.read()
    out, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn last write: dropped
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    return out, good


class ResultFile:
    """An append-only JSON-lines file of finished rows, resumable by key.

    Args:
      path: the ``.jsonl`` file (created with its folder if missing).
      config: the run's configuration (JSON-able dict); its hash is stored
        in the header line and checked when the file exists.
      key: the fields of a row that identify it (e.g. ``("cell",
        "train_step", "estimator")``), or a function ``row -> hashable``.
      on_mismatch: what to do if the file exists with another configuration:
        ``"raise"`` (default, a ``ValueError`` naming what changed),
        ``"new"`` (use the sibling file ``<stem>-<hash[:10]>.jsonl``, itself
        resumable) or ``"overwrite"`` (start afresh).

    Attributes:
      path: the file actually used (differs from ``path`` under ``"new"``).
      config_hash: the configuration's hash.
      resumed: how many rows were already there when the file was opened.

    Examples:
      >>> import os, tempfile
      >>> from jbptt import runs
      >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
      >>> f = runs.ResultFile(path, {"T": 8}, key=("k",))
      >>> f.append({"k": 1, "bias": 0.5}), f.append({"k": 1, "bias": 0.5})
      (True, False)
      >>> g = runs.ResultFile(path, {"T": 8}, key=("k",))  # after a restart
      >>> g.resumed, g.done({"k": 1}), g.done({"k": 2})
      (1, True, False)
      >>> runs.ResultFile(path, {"T": 9}, key=("k",))
      Traceback (most recent call last):
      ...
      ValueError: ...
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: dict,
        key: Sequence[str] | Callable[[dict], Any],
        *,
        on_mismatch: str = "raise",
    ):
        if on_mismatch not in MISMATCH:
            raise ValueError(
                f"Unknown on_mismatch {on_mismatch!r}. It needs to be one of "
                f"{list(MISMATCH)}."
            )
        if callable(key):
            self._key = key
        elif isinstance(key, str) or not all(isinstance(k, str) for k in key):
            raise TypeError(
                "key must be a sequence of field names (e.g. ('cell', 'k')) or a "
                f"function row -> hashable, got {key!r}."
            )
        else:
            fields = tuple(key)
            self._key = lambda row: tuple(_hashable(row[k]) for k in fields)
        self.config = canonical(config)
        self.config_hash = config_hash(config)
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        header = {
            "format": _FORMAT,
            "config_hash": self.config_hash,
            "config": self.config,
        }
        lines = self._open(path)
        if lines and lines[0].get("config_hash") != self.config_hash:
            old = lines[0].get("config", {})
            if on_mismatch == "raise":
                raise ValueError(
                    f"{path} holds results of a different configuration (hash "
                    f"{str(lines[0].get('config_hash'))[:10]}, now "
                    f"{self.config_hash[:10]}); changed: {_diff(old, self.config)}. "
                    "Use another output folder, or on_mismatch='new' to write "
                    "beside it, or 'overwrite' to start afresh."
                )
            if on_mismatch == "new":
                stem, ext = os.path.splitext(path)
                path = f"{stem}-{self.config_hash[:10]}{ext or '.jsonl'}"
                lines = self._open(path)
            else:
                os.remove(path)
                lines = []
        self.path = path
        if not lines:
            _atomic_write(path, header)
            lines = [header]
        self._rows = lines[1:]
        self._done = {self._key(r) for r in self._rows}
        self.resumed = len(self._rows)

    @staticmethod
    def _open(path: str) -> list[dict]:
        if not os.path.exists(path):
            return []
        lines, good = _read_lines(path)
        if lines and lines[0].get("format") != _FORMAT:
            raise ValueError(
                f"{path} is not a jbptt results file (no '{_FORMAT}' header); "
                "choose another path."
            )
        if good != os.path.getsize(path):
            with open(path, "r+b") as f:  # cut a torn last line
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        return lines

    def done(self, row_or_key) -> bool:
        """Whether a row with this key (given a row dict, or a key) is stored."""
        key = self._key(row_or_key) if isinstance(row_or_key, dict) else row_or_key
        return key in self._done

    def append(self, row: dict) -> bool:
        """Write ``row`` durably unless its key is already stored.

        Returns whether it was written.
        """
        if not isinstance(row, dict):
            raise TypeError(f"row must be a dict, got {type(row).__name__}.")
        key = self._key(row)
        if key in self._done:
            return False
        _append_line(self.path, row)
        self._rows.append(canonical(row))
        self._done.add(key)
        return True

    def extend(self, rows: Iterable[dict]) -> int:
        """Append several rows; returns how many were new."""
        return sum(self.append(r) for r in rows)

    def rows(self) -> list[dict]:
        """All stored rows, in the order they were written."""
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _atomic_write(path: str, header: dict) -> None:
    """Create ``path`` holding the header: write a temp file, then rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    _append_line(tmp, header)
    os.replace(tmp, path)
    _fsync_dir(path)


def read_rows(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(config, rows)`` of a result file (a torn last line is ignored).

    Examples:
      >>> import os, tempfile
      >>> from jbptt import runs
      >>> path = os.path.join(tempfile.mkdtemp(), "r.jsonl")
      >>> runs.ResultFile(path, {"seed": 0}, key=("i",)).append({"i": 0, "x": 1.5})
      True
      >>> runs.read_rows(path)
      ({'seed': 0}, [{'i': 0, 'x': 1.5}])
    """
    lines, _ = _read_lines(os.fspath(path))
    if not lines or lines[0].get("format") != _FORMAT:
        raise ValueError(f"{path} is not a jbptt results file.")
    return lines[0]["config"], lines[1:]


# ------------------------------------------------------------ checkpoints ---


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _to_saveable(state):
    # Typed PRNG keys are stored as their raw key data (uint32 words).
    return jax.tree_util.tree_map(
        lambda a: jax.random.key_data(a) if _is_key(a) else np.asarray(a), state
    )


class Checkpointer:
    """Save and restore training state with ``orbax.checkpoint``.

    ``state`` is any pytree of arrays: params, optimizer state, hidden state,
    a typed PRNG key (stored as its key data and re-wrapped on restore),
    Python or array scalars (the step). Saving is synchronous, so a
    checkpoint that :meth:`latest_step` reports is complete on disk; orbax
    writes each step to a temporary folder and renames it when done.

    Args:
      directory: folder of the checkpoints (created if missing).
      config: optional JSON-able configuration; stored beside the
        checkpoints, and reopening with another configuration raises
        ``ValueError`` (resuming a different run would be silently wrong).
      max_to_keep: how many recent checkpoints to keep.

    Examples:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from jbptt import runs
      >>> ckpt = runs.Checkpointer(tempfile.mkdtemp())
      >>> state = {"params": jnp.arange(3.0), "key": jax.random.key(0), "step": 4}
      >>> ckpt.save(4, state)
      >>> ckpt.latest_step()
      4
      >>> back = ckpt.restore(state)
      >>> bool((back["params"] == state["params"]).all()), back["step"]
      (True, 4)
      >>> ckpt.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        config: dict | None = None,
        max_to_keep: int = 2,
    ):
        import orbax.checkpoint as ocp

        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int ≥ 1, got {max_to_keep!r}.")
        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)
        if config is not None:
            self._check_config(config)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False
            ),
        )

    def _check_config(self, config: dict) -> None:
        path = os.path.join(self.directory, "config.json")
        digest = config_hash(config)
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            if stored["config_hash"] != digest:
                changed = _diff(stored["config"], canonical(config))
                raise ValueError(
                    f"{self.directory} holds checkpoints of a different "
                    f"configuration; changed: {changed}. Use another checkpoint "
                    "folder."
                )
            return
        tmp = path + f".tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"config_hash": digest, "config": canonical(config)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``."""
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        """Write ``state`` as checkpoint ``step`` (blocking until on disk)."""
        a = np.asarray(step)
        if a.ndim or not np.issubdtype(a.dtype, np.integer) or a < 0:
            raise ValueError(f"step must be an int ≥ 0, got {step!r}.")
        self._manager.save(
            int(step),
            args=self._ocp.args.StandardSave(_to_saveable(state)),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, template, step: int | None = None):
        """The state saved at ``step`` (default: the latest), shaped as ``template``.

        ``template`` is a state of the same structure (e.g. the freshly
        initialised one): it gives pytree types (optax NamedTuples), shapes,
        dtypes and which leaves are PRNG keys or Python scalars.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        saveable = _to_saveable(template)
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), saveable
        )
        raw = self._manager.restore(
            int(step), args=self._ocp.args.StandardRestore(abstract)
        )

        def back(t, r):
            if _is_key(t):
                return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
            if isinstance(t, bool | int | float) and not isinstance(t, np.generic):
                return type(t)(np.asarray(r).item())
            return jax.numpy.asarray(r)

        return jax.tree_util.tree_map(back, template, raw)

    def close(self) -> None:
        """Release orbax's resources."""
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
