"""Figures of sweep results (needs matplotlib: ``pip install 'jbptt[experiments]'``).

matplotlib is imported when a figure is drawn, not with jbptt.
"""

import math

_COLORS = {
    "full": "black",
    "tbptt": "tab:red",
    "artbp-geom": "tab:blue",
    "artbp-poly": "tab:green",
    "rtrl": "black",
    "snap1": "tab:purple",
    "uoro": "tab:orange",
}


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "jbptt.plotting needs matplotlib, which jbptt does not install: "
            "pip install 'jbptt[experiments]' (or pip install matplotlib)."
        ) from err
    return plt


def _family(row) -> str:
    return row.get("family") or row["estimator"].split("(")[0]


def _deterministic(rows) -> bool:
    return all(r.get("n_samples", 1) == 1 or math.isnan(r["rel_bias_lo"]) for r in rows)


def bias_variance(rows, axes=None, *, ls="-", style=None, title=None, legend=True):
    """Relative bias (top) and one sample's error (bottom) against expected depth.

    One series per estimator family (a row's ``"family"``, else its
    ``"estimator"`` name up to ``(``), x = ``expected_depth`` on a log₂ axis.
    Top: ``rel_bias``, with the 95% interval for random estimators. Bottom, on
    a log axis: ``rel_variance`` of random estimators (filled squares) and
    ``rel_bias²`` of deterministic ones (open circles; their variance is 0),
    the two parts of one sample's error E‖ĝ − g‖²/‖g‖². Deterministic points
    with bias² below 1e-6 (exact up to round-off) are left off the log axis.

    Args:
      rows: dicts as :meth:`jbptt.sweep.SweepResult.rows` gives, optionally
        with a ``"family"`` key.
      axes: ``(ax_bias, ax_variance)`` to draw on; None: a new figure.
      ls: line style of every series (e.g. one per training step).
      style: ``{family: {"color", "marker", "label"}}`` overrides; a marker
        ``""`` draws a line only.
      title: the figure's title (with ``axes=None``).
      legend: put a legend explaining every colour and mark below the axes.

    Returns:
      The legend handles (matplotlib artists), for a legend of the caller's.

    Examples:
      >>> import jax, jbptt
      >>> from jbptt import estimators, plotting, sweep
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> xs = jax.random.normal(jax.random.key(1), (8, 2, 1))
      >>> prob = estimators.Problem(model.cell, model.loss_fn, p,
      ...     model.cell.initial_state(p, (2,)), xs, xs)
      >>> res = sweep.sweep(prob, [estimators.tbptt(2), estimators.artbp(0.5)],
      ...                   jax.random.key(2), 16)
      >>> handles = plotting.bias_variance(res.rows(), title="elman, T = 8")
      >>> len(handles)
      4
      >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    _check_rows(rows)
    plt = _pyplot()
    from matplotlib.lines import Line2D

    style = style or {}
    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(6.5, 7.5), constrained_layout=True)
        if title:
            fig.suptitle(title)
    ax_b, ax_v = axes
    families = list(dict.fromkeys(_family(r) for r in rows))
    handles = []
    for i, fam in enumerate(families):
        rs = sorted((r for r in rows if _family(r) == fam), key=_depth)
        s = style.get(fam, {})
        color = s.get("color", _COLORS.get(fam, f"C{i % 10}"))
        det = _deterministic(rs)
        marker = s.get("marker", "o" if det else "s") or None
        x = [r["expected_depth"] for r in rs]
        b = [r["rel_bias"] for r in rs]
        if det:
            ax_b.plot(x, b, marker=marker, ls=ls, color=color)
            big = [(xi, bi**2) for xi, bi in zip(x, b, strict=True) if bi**2 > 1e-6]
            if big:
                ax_v.plot(*zip(*big, strict=True), marker=marker, ls=ls, color=color,
                          mfc="none")  # fmt: skip
        else:
            lo = [bi - r["rel_bias_lo"] for bi, r in zip(b, rs, strict=True)]
            hi = [r["rel_bias_hi"] - bi for bi, r in zip(b, rs, strict=True)]
            ax_b.errorbar(x, b, yerr=[lo, hi], marker=marker, ls=ls, capsize=3,
                          color=color)  # fmt: skip
            v = [r["rel_variance"] for r in rs]
            ax_v.plot(x, v, marker=marker, ls=ls, color=color)
        label = s.get("label", fam) + ("" if det else " (random)")
        handles.append(Line2D([], [], color=color, marker=marker, label=label))
    handles += [
        Line2D([], [], color="gray", marker="s", ls="none",
               label="lower, filled: variance E‖ĝ − E ĝ‖²/‖g‖²"),
        Line2D([], [], color="gray", marker="o", mfc="none", ls="none",
               label="lower, open: squared bias (deterministic, variance 0)"),
    ]  # fmt: skip
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("expected truncation depth (steps backpropagated)")
        ax.grid(alpha=0.3, which="both")
    ax_b.set_ylabel("relative bias ‖E ĝ − g‖ / ‖g‖ (bars: 95% CI)")
    ax_v.set_ylabel("one sample's error ‖ĝ − g‖² / ‖g‖², by part")
    if any(line.get_ydata().size for line in ax_v.get_lines()):
        ax_v.set_yscale("log")
    if legend:
        ax_b.figure.legend(handles=handles, loc="outside lower center", ncol=2,
                           fontsize=8)  # fmt: skip
    return handles


def _check_rows(rows) -> None:
    """``rows`` a non-empty list of dicts with the keys every point reads."""
    if isinstance(rows, dict) or not rows:
        raise ValueError(
            "rows must be a non-empty list of dicts as SweepResult.rows() gives, "
            f"got {type(rows).__name__} {rows!r:.60}."
        )
    for i, row in enumerate(rows):
        keys = ("expected_depth", "rel_bias")
        missing = [k for k in keys if k not in row]
        if "family" not in row and "estimator" not in row:
            missing.append("estimator (or family)")
        if missing:
            raise ValueError(
                f"rows[{i}] lacks {', '.join(missing)}: rows must be dicts as "
                "SweepResult.rows() gives."
            )


def _depth(row) -> float:
    return row["expected_depth"]
