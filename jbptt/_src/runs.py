"""Resumable runs: append-only result files with a configuration hash.

**Result files** (:class:`ResultFile`) are JSON lines. The first line is a
header that identifies the file (``"format": "jbptt-results-v1"``) and holds
the run's configuration and its hash (SHA-256 of the canonical JSON); every
other line is one finished row, trusted only under that header (a second
header of another configuration inside the file, as two joined files
have, is refused). A file at the path without that header (a CSV, someone
else's JSON lines) is refused and left untouched.

**Locking.** Processes may share a file: every change to it happens while
holding an exclusive ``fcntl.flock`` on ``<path>.lock`` (the real path,
symbolic links resolved). A row is written with one ``write`` on a file
opened for appending, then ``fsync``-ed, after checking under the lock that
the header is still this configuration's; so a run killed at any moment
leaves every earlier row intact and at most one torn last line, which the
next append or open moves to ``<path>.corrupt``. On opening, torn or
corrupt lines, wherever they are, are moved to ``<path>.corrupt`` (with
their line numbers, bytes kept) and the intact rows stay; the file itself
is only rewritten under the lock, from what was read under it, by writing
a temporary file, ``fsync`` and rename, so no row appended by another
process is lost.

**Several processes** of a ``jax.distributed`` job share a file through
process 0, the only one that writes it (:class:`ResultFile`).

**Reopening.** With the same configuration a file resumes: rows already
there are skipped by key. A different configuration, by ``on_mismatch``:
``"raise"`` refuses with a message saying what changed and touches
nothing; ``"new"`` touches nothing and writes a sibling file named after
the new hash; ``"overwrite"`` moves the old file aside to a numbered backup
(``<path>.replaced-<hash>[.n]``, never overwriting one) and starts afresh.
Nothing a run wrote, in this or an earlier run, is deleted.

The configuration hash and the atomic file helpers here are shared with
training checkpoints (``checkpointer.py``).
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

from jbptt._src import durable, processes

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


def config_diff(old: dict, new: dict) -> str:
    """The keys whose values differ, as ``"k: old -> new; ..."`` for messages.

    Examples:
      >>> config_diff({"lr": 0.1, "T": 8}, {"lr": 0.2, "T": 8})
      'lr: 0.1 -> 0.2'
    """
    keys = sorted(set(old) | set(new))
    parts = [
        f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
        for k in keys
        if old.get(k, "<absent>") != new.get(k, "<absent>")
    ]
    return "; ".join(parts) or "(values differ only in representation)"


# ----------------------------------------------------------- result file ---

# Shared with checkpoints (manifests and the configuration file).
replace_atomically = durable.replace_atomically


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, default=_jsonable, allow_nan=True) + "\n").encode()


class _Parsed(NamedTuple):
    lines: list[dict]  # header first, then rows
    numbers: list[int]  # the 1-based line number of each entry of lines
    kept: bytes  # the intact lines, byte for byte
    corrupt: list[tuple[int, bytes]]  # (1-based line number, raw bytes)


def _is_header(obj: dict) -> bool:
    return obj.get("format") == _FORMAT and "config_hash" in obj


def _parse(path: str) -> _Parsed | None:
    """Split a result file into intact lines and corrupt ones.

    A line is intact if it ends with a newline and holds a JSON object. The
    first line must be a jbptt header, else the file is not ours: ``ValueError``
    naming the path (nothing is changed). A header of another configuration
    further down (two files joined) is refused the same way; a repeat of the
    file's own header is skipped. ``None`` for an empty file.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return None
    raw = _split_lines(data)
    header = _json_object(raw[0])
    if header is None or not _is_header(header):
        raise ValueError(
            f"{path} is not a jbptt results file (its first line is not a "
            f"'{_FORMAT}' header); it is left untouched. Choose another path."
        )
    parsed = _Parsed([header], [1], [raw[0]], [])
    for number, line in enumerate(raw[1:], start=2):
        obj = _json_object(line)
        if obj is None:
            parsed.corrupt.append((number, line))
            continue
        parsed.kept.append(line)
        if _is_header(obj):
            _check_joined(path, header, obj, number)
        else:
            parsed.lines.append(obj)
            parsed.numbers.append(number)
    return parsed._replace(kept=b"".join(parsed.kept))


def _check_joined(path: str, header: dict, other: dict, number: int) -> None:
    """Refuse a second header of another configuration: rows after it belong
    to that configuration, and merging them would be silently wrong."""
    first, second = str(header["config_hash"]), str(other["config_hash"])
    if first == second:
        return
    changed = config_diff(header.get("config", {}), other.get("config", {}))
    raise ValueError(
        f"{path}, line {number}: a second header, of another configuration "
        f"(hash {second[:10]}; line 1 has {first[:10]}; changed: {changed}). "
        "This looks like two result files joined, so its rows cannot be "
        f"matched to one configuration. The file is left untouched: split it "
        f"before line {number}."
    )


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
    durable.append_bytes(side, data)
    durable.fsync_dir(side)
    return side


def _hashable(v):
    """A key value as a hashable: lists to tuples, dicts to sorted pairs."""
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _hashable(x)) for k, x in v.items()))
    if isinstance(v, np.generic):
        return v.item()
    return v


def _key_function(key) -> tuple[Callable[[dict], Any], str]:
    """``(row -> key, description)`` from field names or a function."""
    if callable(key):
        return key, f"the key function {getattr(key, '__name__', key)!r}"
    if isinstance(key, str) or not all(isinstance(k, str) for k in key):
        raise TypeError(
            "key must be a sequence of field names (e.g. ('cell', 'k')) or a "
            f"function row -> hashable, got {key!r}."
        )
    fields = tuple(key)
    return (lambda row: tuple(row[k] for k in fields)), f"key fields {list(fields)}"


class ResultFile:
    """An append-only JSON-lines file of finished rows, resumable by key.

    **Sharing and locking.** Every change to the file, by any process, is
    made while holding an exclusive ``fcntl.flock`` on ``<path>.lock`` beside
    it (the real path, symbolic links resolved, so two names of one file
    share one lock): each :meth:`append`, and each rewrite or move on
    opening. A rewrite re-reads the file under the lock, so rows another
    process appended up to that moment are kept. :meth:`append` also checks,
    under the lock, that the file still carries this configuration's header
    (else it raises and writes nothing) and first moves a torn last line
    (a writer killed mid-line) to ``<path>.corrupt`` so the new row does not
    join it. Every row :meth:`append` confirmed (returned ``True``) stays in
    the file, in a numbered backup or (a corrupt line) in ``<path>.corrupt``.

    **Rows and their configuration.** Rows are trusted only under the header
    of their file. A second header of another configuration inside the file
    (two files joined) is refused, naming the line; a row without a key
    field or with an unhashable key is refused, naming the file, the line
    and the key.

    Args:
      path: the ``.jsonl`` file (created with its folder if missing).
      config: the run's configuration (JSON-able dict); its hash is stored
        in the header line and checked when the file exists.
      key: the fields of a row that identify it (e.g. ``("cell",
        "train_step", "estimator")``), or a function ``row -> hashable``.
      on_mismatch: what to do if the file exists with another configuration:
        ``"raise"`` (default): a ``ValueError`` naming what changed; the file
        is not touched. ``"new"``: the file is not touched, and the sibling
        ``<stem>-<hash[:10]>.jsonl`` is used instead (itself resumable).
        ``"overwrite"``: start afresh at ``path``; the old file is not
        deleted but moved aside to ``<path>.replaced-<old hash[:10]>`` (or
        ``....1``, ``....2`` if that name is taken: no backup is ever
        overwritten), named in :attr:`replaced`. A file that is not a jbptt
        result file is refused in every mode and left as it is.

    **Several processes of one job.** In a ``jax.distributed`` job (more
    than one process), every process opens the file at the same point of
    the program, but only process 0 touches it: it opens the file as above
    and sends its rows (or its error, raised on every process) to the
    others, which keep them in memory, skip the same rows and write
    nothing. A job killed on any process and started again resumes from
    the rows process 0 had written. :meth:`append` then returns on every
    process whether the row was new; only process 0 writes it. (Opening is
    a collective: a process that does not open the file stalls the others.)

    Attributes:
      path: the file actually used (differs from ``path`` under ``"new"``).
      config_hash: the configuration's hash.
      resumed: how many rows were already there when the file was opened.
      replaced: where ``"overwrite"`` moved the old file, else ``None``.
      writes: whether this process writes the file (``False`` on processes
        other than 0 of a ``jax.distributed`` job).

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
        self._key, self._key_text = _key_function(key)
        self.config = canonical(config)
        self.config_hash = config_hash(config)
        self.replaced: str | None = None
        self.path = os.fspath(path)
        index, count = processes.group()
        self.writes = index == 0
        if count == 1:
            self._open(on_mismatch)
        else:
            self._open_shared(on_mismatch)
        self.resumed = len(self._rows)

    def _open(self, on_mismatch: str) -> None:
        opened = self._open_locked(on_mismatch)
        if opened is None:  # "new": the sibling named after this hash
            stem, ext = os.path.splitext(self.path)
            self.path = f"{stem}-{self.config_hash[:10]}{ext or '.jsonl'}"
            opened = self._open_locked("raise")
        self._rows, keys = opened
        self._done = set(keys)

    def _open_shared(self, on_mismatch: str) -> None:
        """In a ``jax.distributed`` job: process 0 opens the file and sends
        what it found (rows, path, or the error) to every other process,
        which writes nothing."""
        sent = None
        if self.writes:
            try:
                self._open(on_mismatch)
            except Exception as err:
                processes.broadcast(
                    {"error": f"{type(err).__name__}: {err}"}, True, _jsonable
                )
                raise
            sent = {"path": self.path, "replaced": self.replaced, "rows": self._rows}
        got = processes.broadcast(sent, self.writes, _jsonable)
        if self.writes:
            return
        if "error" in got:
            raise ValueError(f"process 0 could not open {self.path}: {got['error']}")
        self.path, self.replaced, self._rows = got["path"], got["replaced"], got["rows"]
        self._done = {
            self._row_key(row, f"{self.path} (process 0's row {i + 1})")
            for i, row in enumerate(self._rows)
        }

    def _open_locked(self, on_mismatch: str):
        """``(rows, keys)`` of the file at ``self.path``, created if missing;
        ``None`` when it holds another configuration and ``on_mismatch`` is
        ``"new"``. Runs under the file's lock."""
        real = os.path.realpath(self.path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        self._real = real
        with durable.locked(real):
            parsed = self._load(real)
            if parsed is None:
                self._write_header(real)
                return [], []
            header = parsed.lines[0]
            if header.get("config_hash") == self.config_hash:
                return self._resume(real, parsed)
            if on_mismatch == "raise":
                raise ValueError(self._mismatch(header))
            if on_mismatch == "new":
                return None
            old = str(header.get("config_hash"))[:10]
            self.replaced = durable.move_aside(real, f"{real}.replaced-{old}")
            self._write_header(real)
            return [], []

    def _load(self, real: str) -> _Parsed | None:
        if not os.path.lexists(real):
            return None
        if not os.path.isfile(real):
            raise ValueError(
                f"{self.path} exists and is not a file; choose another path."
            )
        return _parse(real)

    def _write_header(self, real: str) -> None:
        header = {
            "format": _FORMAT,
            "config_hash": self.config_hash,
            "config": self.config,
        }
        if os.path.lexists(real):  # an empty file: nothing in it to lose
            durable.replace_atomically(real, _line(header))
        elif not durable.create_exclusively(real, _line(header)):
            raise ValueError(
                f"{self.path} appeared while it was being created by a writer "
                "that does not take its lock; it is left untouched."
            )

    def _mismatch(self, header: dict) -> str:
        changed = config_diff(header.get("config", {}), self.config)
        return (
            f"{self.path} holds results of a different configuration (hash "
            f"{str(header.get('config_hash'))[:10]}, now "
            f"{self.config_hash[:10]}); changed: {changed}. "
            "Use another output folder, or on_mismatch='new' to write "
            "beside it, or 'overwrite' to start afresh (the old file is "
            "kept as a numbered backup)."
        )

    def _resume(self, real: str, parsed: _Parsed):
        """Rows and keys of a file of this configuration; corrupt lines are
        moved to the side file (the rewrite is of what was read under the
        lock, so nothing appended before it is lost)."""
        rows = parsed.lines[1:]
        keys = [
            self._row_key(row, f"{self.path}, line {n}")
            for row, n in zip(rows, parsed.numbers[1:], strict=True)
        ]
        if parsed.corrupt:
            side = _quarantine(real, parsed.corrupt)
            durable.replace_atomically(real, parsed.kept)
            numbers = [n for n, _ in parsed.corrupt]
            # A torn last line is what a kill mid-write leaves: expected, so
            # quarantined quietly. Anything else is damage worth a warning.
            torn_last = len(numbers) == 1 and not parsed.corrupt[0][1].endswith(b"\n")
            if not torn_last:
                warnings.warn(
                    f"{self.path}: {len(numbers)} corrupt line(s) (line "
                    f"{', '.join(map(str, numbers))}) moved to {side}; every "
                    "intact row is kept.",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return rows, keys

    def _row_key(self, row: dict, where: str):
        """The hashable key of ``row``; ``ValueError`` naming ``where`` and the
        key when a field is missing or a value cannot be a key."""
        try:
            key = _hashable(self._key(row))
            hash(key)
        except KeyError as e:
            raise ValueError(
                f"{where}: the row has no key field {e.args[0]!r} ({self._key_text}"
                f"; the row has {sorted(row)}). A row of another run or format? "
                "The file is left untouched."
            ) from None
        except TypeError as e:
            raise ValueError(
                f"{where}: the row's key ({self._key_text}) cannot be used as a "
                f"key ({e}); key values must be numbers, strings, or lists or "
                "dicts of them."
            ) from None
        return key

    def done(self, row_or_key) -> bool:
        """Whether a row with this key (given a row dict, or a key) is stored."""
        if isinstance(row_or_key, dict):
            key = self._row_key(canonical(row_or_key), "the row passed to done")
        else:
            key = _hashable(row_or_key)
        return key in self._done

    def append(self, row: dict) -> bool:
        """Write ``row`` durably unless its key is already stored.

        The write happens under the file's lock, after checking that the file
        still holds this configuration's header.

        Returns:
          Whether it was written (``True`` only once it is on disk; on a
          process that does not write, whether the row was new).

        Raises:
          ValueError: the row has no key field, or the file was replaced by
            one of another configuration since it was opened.
          FileNotFoundError: the file was moved or deleted since it was
            opened.
        """
        if not isinstance(row, dict):
            raise TypeError(f"row must be a dict, got {type(row).__name__}.")
        row = canonical(row)
        key = self._row_key(row, "the row passed to append")
        if key in self._done:
            return False
        if self.writes:
            with durable.locked(self._real):
                self._append_checked(_line(row))
        self._rows.append(row)
        self._done.add(key)
        return True

    def _append_checked(self, data: bytes) -> None:
        try:
            fd = os.open(self._real, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.path} was moved or deleted since it was opened; the row "
                "was not written. Open the file again."
            ) from None
        try:
            self._check_header(fd)
            self._cut_torn_tail(fd)
            durable.write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _check_header(self, fd: int) -> None:
        head = b""
        while b"\n" not in head:
            chunk = os.pread(fd, 1 << 16, len(head))
            if not chunk:
                break
            head += chunk
        header = _json_object(head.partition(b"\n")[0] + b"\n")
        found = None if header is None else header.get("config_hash")
        if found != self.config_hash:
            raise ValueError(
                f"{self.path} no longer holds this run's results (its header "
                f"has configuration hash {str(found)[:10]}, not "
                f"{self.config_hash[:10]}): it was replaced since it was opened. "
                "The row was not written; open the file again."
            )

    def _cut_torn_tail(self, fd: int) -> None:
        """Move a torn last line (a writer killed mid-line) to the side file
        and cut it off, so the next row starts on a line of its own."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        data = os.pread(fd, size, 0)
        cut = data.rfind(b"\n") + 1
        _quarantine(self._real, [(data.count(b"\n", 0, cut) + 1, data[cut:])])
        os.ftruncate(fd, cut)  # only bytes now kept in the side file
        os.fsync(fd)

    def extend(self, rows: Iterable[dict]) -> int:
        """Append several rows; returns how many were new."""
        return sum(self.append(r) for r in rows)

    def rows(self) -> list[dict]:
        """All stored rows, in the order they were written."""
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def read_rows(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(config, rows)`` of a result file (corrupt or torn lines are skipped;
    the file is not changed). Two joined files of different configurations
    are refused, naming the line.

    Examples:
      >>> import os, tempfile
      >>> from jbptt import runs
      >>> path = os.path.join(tempfile.mkdtemp(), "r.jsonl")
      >>> runs.ResultFile(path, {"seed": 0}, key=("i",)).append({"i": 0, "x": 1.5})
      True
      >>> runs.read_rows(path)
      ({'seed': 0}, [{'i': 0, 'x': 1.5}])
    """
    parsed = _parse(os.fspath(path))
    if parsed is None:
        raise ValueError(f"{path} is not a jbptt results file (it is empty).")
    return parsed.lines[0]["config"], parsed.lines[1:]
