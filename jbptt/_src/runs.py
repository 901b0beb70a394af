"""Resumable runs: append-only result files and training checkpoints.

**Result files** (:class:`ResultFile`) are JSON lines. The first line is a
header that identifies the file (``"format": "jbptt-results-v1"``) and holds
the run's configuration and its hash (SHA-256 of the canonical JSON); every
other line is one finished row. A file at the path without that header (a
CSV, someone else's JSON lines) is refused and left untouched. A row is
written with a single ``write`` on a file opened for appending, then
flushed and ``fsync``-ed, so a run killed at any moment leaves every earlier
row intact and at most one torn last line. On reopening, torn or corrupt
lines, wherever they are, are moved to ``<path>.corrupt`` (with their line
numbers, bytes kept) and the intact rows stay; the file itself is only ever
rewritten by writing a temporary file, ``fsync`` and rename. Reopening with
the same configuration resumes: rows already there are skipped by key. A
different configuration is refused with a message saying what changed, or,
if asked, written to a sibling file named after the new hash.

**Checkpoints** (:class:`Checkpointer`) save and restore any pytree of
training state (params, optimizer state, hidden state, PRNG key, step) with
``orbax.checkpoint``; arrays round-trip bit for bit, so a resumed run
matches an uninterrupted one exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jbptt._src import validation

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


def _append_bytes(path: str, data: bytes) -> None:
    """One ``write`` (completed if short) on a file opened for appending, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # short writes are rare but legal
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, default=_jsonable, allow_nan=True) + "\n").encode()


def _append_line(path: str, obj: dict) -> None:
    """One ``write`` of one JSON line, then flush to disk."""
    _append_bytes(path, _line(obj))


def _replace_atomically(path: str, data: bytes) -> None:
    """Make ``path`` hold ``data``: write a temp file beside it, fsync, rename,
    fsync the folder. A kill at any moment leaves the old or the new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path)


class _Parsed(NamedTuple):
    lines: list[dict]  # header first, then rows
    kept: bytes  # the intact lines, byte for byte
    corrupt: list[tuple[int, bytes]]  # (1-based line number, raw bytes)


def _parse(path: str) -> _Parsed | None:
    """Split a result file into intact lines and corrupt ones.

    A line is intact if it ends with a newline and holds a JSON object. The
    first line must be a jbptt header, else the file is not ours: ``ValueError``
    naming the path (nothing is changed). ``None`` for an empty file.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return None
    raw = _split_lines(data)
    header = _json_object(raw[0])
    if header is None or header.get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not a jbptt results file (its first line is not a "
            f"'{_FORMAT}' header); it is left untouched. Choose another path."
        )
    lines, kept, corrupt = [header], [raw[0]], []
    for number, line in enumerate(raw[1:], start=2):
        obj = _json_object(line)
        if obj is None:
            corrupt.append((number, line))
        else:
            lines.append(obj)
            kept.append(line)
    return _Parsed(lines, b"".join(kept), corrupt)


def _split_lines(data: bytes) -> list[bytes]:
    """Lines ending in ``\\n`` (kept), and a last one without it if any.

    Only ``\\n`` ends a line: JSON escapes every control character, so a
    ``\\r`` (which ``bytes.splitlines`` would split on) is part of damage.
    """
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    return lines + [parts[-1]] if parts[-1] else lines


def _json_object(line: bytes) -> dict | None:
    if not line.endswith(b"\n"):
        return None  # a torn last write
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _quarantine(path: str, corrupt: list[tuple[int, bytes]]) -> str:
    """Append the corrupt lines to ``<path>.corrupt`` (with their line numbers,
    bytes kept exactly via surrogate escapes) before they leave ``path``."""
    side = path + ".corrupt"
    data = b"".join(
        _line(
            {
                "line": number,
                "text": raw.decode("utf-8", "surrogateescape"),
                "torn": not raw.endswith(b"\n"),
            }
        )
        for number, raw in corrupt
    )
    _append_bytes(side, data)
    _fsync_dir(side)
    return side


def _read_lines(path: str) -> list[dict]:
    """Header and intact rows (corrupt lines skipped), without changing the file."""
    parsed = _parse(path)
    return [] if parsed is None else parsed.lines


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
        resumable) or ``"overwrite"`` (start afresh; the old file is kept
        as ``<path>.replaced-<old hash[:10]>``).

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
            else:  # keep the old results beside it: nothing is deleted
                old_hash = str(lines[0].get("config_hash"))[:10]
                os.replace(path, f"{path}.replaced-{old_hash}")
                _fsync_dir(path)
                lines = []
        self.path = path
        if not lines:
            _replace_atomically(path, _line(header))
            lines = [header]
        self._rows = lines[1:]
        self._done = {self._key(r) for r in self._rows}
        self.resumed = len(self._rows)

    @staticmethod
    def _open(path: str) -> list[dict]:
        """Intact lines of ``path``; corrupt ones are moved to the side file."""
        if not os.path.exists(path):
            return []
        if not os.path.isfile(path):
            raise ValueError(f"{path} exists and is not a file; choose another path.")
        parsed = _parse(path)
        if parsed is None:
            return []
        if parsed.corrupt:
            side = _quarantine(path, parsed.corrupt)
            _replace_atomically(path, parsed.kept)
            numbers = [n for n, _ in parsed.corrupt]
            # A torn last line is what a kill mid-write leaves: expected, so
            # quarantined quietly. Anything else is damage worth a warning.
            torn_last = len(numbers) == 1 and not parsed.corrupt[0][1].endswith(b"\n")
            if not torn_last:
                warnings.warn(
                    f"{path}: {len(numbers)} corrupt line(s) (line "
                    f"{', '.join(map(str, numbers))}) moved to {side}; every "
                    "intact row is kept.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return parsed.lines

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


def read_rows(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(config, rows)`` of a result file (corrupt or torn lines are skipped;
    the file is not changed).

    Examples:
      >>> import os, tempfile
      >>> from jbptt import runs
      >>> path = os.path.join(tempfile.mkdtemp(), "r.jsonl")
      >>> runs.ResultFile(path, {"seed": 0}, key=("i",)).append({"i": 0, "x": 1.5})
      True
      >>> runs.read_rows(path)
      ({'seed': 0}, [{'i': 0, 'x': 1.5}])
    """
    lines = _read_lines(os.fspath(path))
    if not lines:
        raise ValueError(f"{path} is not a jbptt results file (it is empty).")
    return lines[0]["config"], lines[1:]


# ------------------------------------------------------------ checkpoints ---


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _to_saveable(state):
    # Typed PRNG keys are stored as their raw key data (uint32 words).
    return jax.tree_util.tree_map(
        lambda a: jax.random.key_data(a) if _is_key(a) else np.asarray(a), state
    )


_MANIFESTS = "jbptt-manifests"


def _leaf_paths(tree) -> list[tuple[str, Any]]:
    return [
        (jax.tree_util.keystr(path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _describe_leaves(saveable) -> list[list]:
    return [
        [name, list(np.shape(a)), str(np.asarray(a).dtype)]
        for name, a in _leaf_paths(saveable)
    ]


def _digest(saveable) -> str:
    h = hashlib.sha256()
    for name, a in _leaf_paths(saveable):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _compare(saved: list, expected: list, step: int) -> None:
    """Refuse a template that differs from the saved state, naming the leaf."""
    saved_names = [n for n, *_ in saved]
    expected_names = [n for n, *_ in expected]
    if saved_names != expected_names:
        pairs = zip(saved_names, expected_names, strict=False)
        i = next(
            (j for j, (a, b) in enumerate(pairs) if a != b),
            min(len(saved_names), len(expected_names)),
        )
        got = saved_names[i] if i < len(saved_names) else "<none>"
        want = expected_names[i] if i < len(expected_names) else "<none>"
        raise ValueError(
            f"template does not match checkpoint step {step}: different "
            f"structure at leaf {i}: saved {got}, template {want} "
            f"({len(saved_names)} saved leaves, {len(expected_names)} in the "
            "template)."
        )
    for (name, shape, dtype), (_, t_shape, t_dtype) in zip(
        saved, expected, strict=True
    ):
        if shape != t_shape or dtype != t_dtype:
            raise ValueError(
                f"template does not match checkpoint step {step} at leaf {name}: "
                f"saved {dtype}{shape}, template {t_dtype}{t_shape}. Restore "
                "into a template of the saved shapes and dtypes."
            )


def _from_saveable(template, raw):
    def back(t, r):
        if _is_key(t):
            return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
        if isinstance(t, bool | int | float) and not isinstance(t, np.generic):
            return type(t)(np.asarray(r).item())
        return jax.numpy.asarray(r)

    return jax.tree_util.tree_map(back, template, raw)


def _for_orbax(saveable):
    # orbax refuses zero-size arrays; they carry no data (their shape and
    # dtype are in the manifest), so a one-element stand-in is stored.
    return jax.tree_util.tree_map(
        lambda a: a if a.size else np.zeros((1,), a.dtype), saveable
    )


def _from_orbax(raw, saveable):
    return jax.tree_util.tree_map(
        lambda r, t: r if t.size else np.zeros(t.shape, t.dtype), raw, saveable
    )


class Checkpointer:
    """Save and restore training state with ``orbax.checkpoint``.

    ``state`` is any pytree of arrays: params, optimizer state, hidden state,
    a typed PRNG key (stored as its key data and re-wrapped on restore),
    Python or array scalars (the step). Saving is synchronous, so a
    checkpoint that :meth:`latest_step` reports is complete on disk; orbax
    writes each step to a temporary folder and renames it when done, and
    jbptt then writes the step's manifest (leaf shapes, dtypes and a
    SHA-256 of the bytes) by temp-file-and-rename. :meth:`restore` refuses a
    template that differs from what was saved and skips, with a warning, a
    step whose bytes no longer match their checksum.

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

        validation.integer("max_to_keep", max_to_keep, minimum=1, what="an int ≥ 1")
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

    # Each saved step gets a manifest (leaf paths, shapes, dtypes and a
    # SHA-256 of every leaf's bytes) written atomically after orbax has
    # finished the step: a step without an intact manifest is incomplete.
    def _manifest_path(self, step: int) -> str:
        return os.path.join(self.directory, _MANIFESTS, f"{int(step)}.json")

    def _manifest(self, step: int) -> dict | None:
        try:
            with open(self._manifest_path(step), encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) and m.get("step") == int(step) else None

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint and manifest, oldest first."""
        self._manager.reload()  # see steps written by another process
        return sorted(
            int(s) for s in self._manager.all_steps() if self._manifest(s) is not None
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``.

        Read from disk each time, so it is the same in this process and in
        one that reopens the folder (e.g. after a kill).
        """
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state) -> None:
        """Write ``state`` as checkpoint ``step`` (blocking until on disk)."""
        if isinstance(step, bool | np.bool_):
            raise ValueError(f"step must be an int ≥ 0, got {step!r}.")
        a = np.asarray(step)
        if a.ndim or not np.issubdtype(a.dtype, np.integer) or a < 0:
            raise ValueError(f"step must be an int ≥ 0, got {step!r}.")
        step = int(step)
        saveable = _to_saveable(state)
        self._manager.save(
            step, args=self._ocp.args.StandardSave(_for_orbax(saveable)), force=True
        )
        self._manager.wait_until_finished()
        os.makedirs(os.path.join(self.directory, _MANIFESTS), exist_ok=True)
        manifest = {"step": step, "leaves": _describe_leaves(saveable)}
        manifest["sha256"] = _digest(saveable)
        _replace_atomically(
            self._manifest_path(step), json.dumps(manifest).encode() + b"\n"
        )
        kept = {int(s) for s in self._manager.all_steps()}
        for name in os.listdir(os.path.join(self.directory, _MANIFESTS)):
            stem = name.removesuffix(".json")
            if stem.isdigit() and int(stem) not in kept:  # pruned by max_to_keep
                os.remove(os.path.join(self.directory, _MANIFESTS, name))

    def restore(self, template, step: int | None = None):
        """The state saved at ``step`` (default: the latest intact one).

        ``template`` is a state of the same structure (e.g. the freshly
        initialised one): it gives pytree types (optax NamedTuples), shapes,
        dtypes and which leaves are PRNG keys or Python scalars. It must
        match what was saved exactly: a different structure, shape or dtype
        is refused (``ValueError`` naming the first differing leaf) rather
        than reshaped or cast.

        Every step's bytes are checked against the SHA-256 stored when it was
        saved. With ``step=None`` a corrupted step is skipped with a
        ``RuntimeWarning`` and the newest intact one is restored; an explicit
        corrupted ``step`` raises ``ValueError``.

        Raises:
          FileNotFoundError: no (intact) checkpoint in the folder.
          ValueError: ``template`` does not match the saved state, or the
            requested step is corrupted or missing.
        """
        saveable = _to_saveable(template)
        expected = _describe_leaves(saveable)
        if step is not None:
            step = int(validation.nonnegative_int("step", step))
            manifest = self._manifest(step)
            if manifest is None or step not in self._manager.all_steps():
                raise ValueError(
                    f"no complete checkpoint for step {step} in {self.directory}; "
                    f"steps: {self.all_steps()}."
                )
            _compare(manifest["leaves"], expected, step)
            raw, err = self._restore_checked(step, saveable, manifest)
            if err:
                raise ValueError(err)
            return _from_saveable(template, raw)
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        for s in reversed(steps):
            manifest = self._manifest(s)
            _compare(manifest["leaves"], expected, s)
            raw, err = self._restore_checked(s, saveable, manifest)
            if not err:
                return _from_saveable(template, raw)
            warnings.warn(
                f"{err} Falling back to an older checkpoint.",
                RuntimeWarning,
                stacklevel=2,
            )
        raise FileNotFoundError(
            f"no intact checkpoint in {self.directory}: every step ({steps}) "
            "failed its checksum."
        )

    def _restore_checked(self, step, saveable, manifest):
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _for_orbax(saveable)
        )
        try:
            raw = self._manager.restore(
                step, args=self._ocp.args.StandardRestore(abstract)
            )
            raw = _from_orbax(raw, saveable)
        except Exception as e:  # orbax's own error on unreadable bytes
            return None, (
                f"checkpoint step {step} in {self.directory} is unreadable "
                f"({type(e).__name__}: {str(e)[:200]})."
            )
        if _digest(raw) != manifest.get("sha256"):
            return None, (
                f"checkpoint step {step} in {self.directory} is corrupted: its "
                "bytes do not match the SHA-256 stored when it was saved."
            )
        return raw, None

    def close(self) -> None:
        """Release orbax's resources."""
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
