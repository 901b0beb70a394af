"""Shared command-line pieces of the experiments.

* ``parser``: argparse with the defaults shown in ``--help``.
* ``parse``: ``--quick`` sets defaults only; flags given explicitly win.
* Flag types (``positive_int``, ``nonneg_int``, ``positive_float``,
  ``finite_float``, ``probability``): refuse bools, NaN/inf and out-of-range
  values with a message naming what was expected.
* ``add_distributed`` and ``start_distributed``: the flags that run the same
  command on every process of a ``jax.distributed`` job (``--coordinator``,
  ``--num-processes``, ``--process-id``, ``--distributed``, or the
  ``JBPTT_*`` environment variables), and the start of that job, before
  any other JAX call.
* ``run_name``: a file stem written inside ``--out`` (non-empty, no path
  separator, no ``..``, no leading dot), so a run writes only inside its
  output folder.
* ``finish``: always writes the JSON summary (with ``error`` when a step
  after the rows failed), prints the summary table and the files written,
  and exits non-zero on failure.
* ``set_log_scale``: a log axis only over positive values; exact zeros are
  marked at the axis floor; a linear axis with a note when nothing is
  positive.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import traceback

import numpy as np

from jbptt.runs import run_metadata


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser whose ``--help`` shows every default."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def add_quick(p: argparse.ArgumentParser, quick: dict) -> None:
    """Adds ``--quick``; ``quick`` maps destinations to their quick defaults."""
    shown = ", ".join(f"{k}={v}" for k, v in quick.items())
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny settings (seconds), for tests; sets defaults only ({shown})",
    )


def parse(p: argparse.ArgumentParser, argv, quick: dict) -> argparse.Namespace:
    """Parses ``argv``; with ``--quick``, ``quick`` replaces the defaults only.

    Parsing twice keeps explicitly given flags: ``--quick --seed 3`` runs the
    quick settings with seed 3.
    """
    first = p.parse_args(argv)
    if not first.quick:
        return first
    saved = {k: p.get_default(k) for k in quick}
    p.set_defaults(**quick)
    try:
        return p.parse_args(argv)
    finally:
        p.set_defaults(**saved)


# ------------------------------------------------------------- flag types ---


def _number(value, kind):
    if isinstance(value, (bool, np.bool_)):
        raise argparse.ArgumentTypeError(f"expected {kind}, got the bool {value}")
    if isinstance(value, str):
        try:
            return float(value) if kind != "an integer" else int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {kind}, got {value!r}"
            ) from None
    if kind == "an integer":
        if isinstance(value, numbers.Integral):
            return int(value)
        raise argparse.ArgumentTypeError(f"expected {kind}, got {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    raise argparse.ArgumentTypeError(f"expected {kind}, got {value!r}")


def positive_int(value) -> int:
    """An integer ≥ 1 (Python or NumPy int, or its string; bool refused)."""
    v = _number(value, "an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {v}")
    return v


def nonneg_int(value) -> int:
    """An integer ≥ 0 (bool refused)."""
    v = _number(value, "an integer")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {v}")
    return v


def finite_float(value) -> float:
    """A finite real number (NaN, ±inf and bool refused)."""
    v = _number(value, "a finite number")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {v}")
    return v


def positive_float(value) -> float:
    """A finite number > 0."""
    v = finite_float(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {v}")
    return v


def nonneg_float(value) -> float:
    """A finite number ≥ 0."""
    v = finite_float(value)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {v}")
    return v


def probability(value) -> float:
    """A number in [0, 1]."""
    v = finite_float(value)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {v}")
    return v


def run_name(value) -> str:
    """A name used as a file stem inside ``--out``.

    Refused: the empty name (``OUT/.json`` would sit beside ``OUT``'s
    contents as a hidden file, and ``Path(OUT) / ""`` is ``OUT`` itself), a
    path separator or ``..`` (it would leave ``--out``), a leading dot (a
    hidden file) and control characters.
    """
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(f"expected a run name, got {value!r}")
    bad = (
        not value
        or value.startswith(".")
        or ".." in value
        or any(sep in value for sep in ("/", "\\", os.sep, os.altsep or "/"))
        or any(ord(c) < 32 for c in value)
    )
    if bad:
        raise argparse.ArgumentTypeError(
            "expected a run name: a non-empty file stem without path "
            f"separators, '..' or a leading dot (e.g. char_lm_gru), got {value!r}"
        )
    return value


# ------------------------------------------------------ several processes ---

# Flag destination -> environment variable read when the flag is not given.
DISTRIBUTED_ENV = {
    "coordinator": "JBPTT_COORDINATOR",
    "num_processes": "JBPTT_NUM_PROCESSES",
    "process_id": "JBPTT_PROCESS_ID",
}


def address(value) -> str:
    """``HOST:PORT`` (port 1-65535), e.g. ``127.0.0.1:1234`` or ``node0:1234``."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with a port in 1..65535, got {value!r}"
        )
    return str(value)


def add_distributed(p: argparse.ArgumentParser) -> None:
    """Adds the flags of a multi-process run (see :func:`start_distributed`)."""
    g = p.add_argument_group(
        "several processes (jax.distributed)",
        "Run the same command on every process of the job; only process 0 "
        "writes files. Each flag falls back to the environment variable "
        "named in its help.",
    )
    g.add_argument(
        "--coordinator",
        type=address,
        default=None,
        help="HOST:PORT of process 0, reachable by every process (JBPTT_COORDINATOR)",
    )
    g.add_argument(
        "--num-processes",
        type=positive_int,
        default=None,
        help="processes in the job (JBPTT_NUM_PROCESSES)",
    )
    g.add_argument(
        "--process-id",
        type=nonneg_int,
        default=None,
        help="this process, 0 .. num-processes - 1 (JBPTT_PROCESS_ID)",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="join a jax.distributed job, letting JAX detect what the three "
        "flags above leave out (Slurm, Open MPI, Cloud TPU)",
    )


def _from_env(p, args, dest: str, kind) -> None:
    var = DISTRIBUTED_ENV[dest]
    if getattr(args, dest) is not None or not os.environ.get(var):
        return
    try:
        setattr(args, dest, kind(os.environ[var]))
    except argparse.ArgumentTypeError as err:
        flag = "--" + dest.replace("_", "-")
        p.error(f"{var} (the default of {flag}): {err}")


def start_distributed(p: argparse.ArgumentParser, args) -> tuple[int, int]:
    """Joins the ``jax.distributed`` job that the flags of
    :func:`add_distributed` describe; call it right after parsing, before
    any other JAX call. Returns ``(process index, process count)``:
    ``(0, 1)`` when no flag is given.

    The flags are then removed from ``args``: where a run is computed does
    not change its numbers, so they stay out of the configuration that
    result files hash. CPU processes exchange their collectives over gloo.
    Processes other than 0 get ``--no-progress``.
    """
    _from_env(p, args, "coordinator", address)
    _from_env(p, args, "num_processes", positive_int)
    _from_env(p, args, "process_id", nonneg_int)
    given = {d: getattr(args, d) for d in DISTRIBUTED_ENV}
    auto = args.distributed
    for dest in (*DISTRIBUTED_ENV, "distributed"):
        delattr(args, dest)
    if not auto and all(v is None for v in given.values()):
        return 0, 1
    missing = ["--" + d.replace("_", "-") for d, v in given.items() if v is None]
    if missing and not auto:
        p.error(
            "--coordinator, --num-processes and --process-id go together; "
            f"missing {', '.join(missing)} (or add --distributed to let JAX "
            "detect them on Slurm, Open MPI or Cloud TPU)"
        )
    n, i = given["num_processes"], given["process_id"]
    if n is not None and i is not None and i >= n:
        p.error(f"--process-id must be < --num-processes = {n}, got {i}")
    import jax

    # CPU collectives across processes (XLA's GPU and TPU ones need nothing).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=given["coordinator"],
            num_processes=n,
            process_id=i,
        )
    except (ValueError, RuntimeError, TypeError) as err:
        p.error(
            "--distributed: jax.distributed.initialize failed "
            f"({type(err).__name__}: {err}); give --coordinator, "
            "--num-processes and --process-id"
        )
    index, count = jax.process_index(), jax.process_count()
    print(
        f"process {index} of {count}: {jax.local_device_count()} local "
        f"device(s), {jax.device_count()} in all",
        flush=True,
    )
    if index and hasattr(args, "no_progress"):
        args.no_progress = True
    return index, count


# ----------------------------------------------------------------- finish ---


def table(rows: list[dict], columns=None) -> str:
    """A plain-text table of ``rows`` (dicts) over ``columns``."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)
    ]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells
    ]
    return "\n".join(lines)


class Run:
    """Collects the files a run writes and the steps that failed.

    ``step(name, fn, *args)`` runs one output step (CSV, plot, ...); a failure
    is recorded and printed instead of ending the run, so the JSON summary is
    still written by ``finish``.
    """

    def __init__(self):
        self.files: list[str] = []
        self.errors: list[str] = []
        self.notes: list[str] = []

    def step(self, name: str, fn, *args, **kwargs):
        try:
            out = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - recorded, reported, exit 1
            msg = f"{name} failed: {type(err).__name__}: {err}"
            self.errors.append(msg)
            print(f"error: {msg}")
            traceback.print_exc()
            return None
        return out

    def wrote(self, path: str) -> None:
        self.files.append(path)

    def finish(
        self,
        json_path: str,
        summary: dict,
        *,
        config,
        seed,
        rows=None,
        columns=None,
        title="summary",
    ) -> dict:
        """Writes the JSON summary, prints the table and the files written.

        Args:
          json_path: where the summary goes.
          summary: experiment-specific fields (headline numbers, ...).
          config: the run's settings, stored with ``run_metadata``.
          seed: the PRNG seed.
          rows, columns: the summary table printed (and not stored).
          title: the table's heading.

        Returns:
          The JSON record. Raises SystemExit(1) after writing it when any
          step failed.
        """
        meta = run_metadata(config, seed=seed)
        record = {**meta, **summary}
        record["files"] = [os.path.basename(f) for f in self.files] + [
            os.path.basename(json_path)
        ]
        if self.notes:
            record["notes"] = list(self.notes)
        record["error"] = "; ".join(self.errors) if self.errors else None
        with open(json_path, "w") as f:
            json.dump(record, f, indent=2, default=_jsonable)
        self.files.append(json_path)
        if rows is not None:
            print(f"\n{title}:")
            print(table(rows, columns))
        for note in self.notes:
            print(f"note: {note}")
        print("\nwrote:")
        for path in self.files:
            print(f"  {path}")
        if self.errors:
            print("FAILED: " + "; ".join(self.errors))
            raise SystemExit(1)
        return record


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


# --------------------------------------------------------------- plotting ---


def set_log_scale(ax, values, axis: str = "y", label: str = "") -> str | None:
    """Log scale on ``axis`` over the positive ``values``; a note if not.

    Exact zeros (and negatives) cannot be drawn on a log axis: the limits are
    set from the positive values only (so a round-off zero does not stretch
    the axis to 1e-16), and the caller marks zeros with ``mark_zeros``. With
    no positive value the axis stays linear and a note is returned (and
    written on the axes).
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    pos = v[v > 0]
    if pos.size == 0:
        note = f"{label or axis}: no positive values, drawn linear"
        ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=8, color="gray")
        return note
    lo, hi = pos.min(), pos.max()
    if axis == "y":
        ax.set_yscale("log")
        ax.set_ylim(lo / 2, hi * 2)
    else:
        ax.set_xscale("log")
        ax.set_xlim(lo / 2, hi * 2)
    return None


def mark_zeros(ax, x, y, floor=None, **kw) -> int:
    """Marks points whose ``y`` is 0 (or below ``floor``) at the axis floor.

    Returns the number marked; they are drawn as downward triangles on the
    bottom edge, labelled "exact 0" once.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    cut = 0.0 if floor is None else floor
    zero = y <= cut
    if not zero.any():
        return 0
    bottom = ax.get_ylim()[0]
    kw.setdefault("marker", "v")
    kw.setdefault("ls", "none")
    kw.setdefault("clip_on", False)
    ax.plot(x[zero], np.full(zero.sum(), bottom), **kw)
    return int(zero.sum())
