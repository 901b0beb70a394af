"""The results page: rerun the full-run experiments and regenerate the
numeric tables of ``experiments/RESULTS.md`` from their JSON files.

Each generated table sits between ``<!-- report:NAME -->`` and
``<!-- /report:NAME -->`` markers and is rebuilt from one JSON file in
``experiments/figures/``; ``--check`` rebuilds every table without running
anything and fails if the page differs from its JSON, so the page cannot
drift from the data.

Usage::

    python -m experiments.report            # rerun everything, rewrite tables
    python -m experiments.report --tables   # rewrite tables from the JSON only
    python -m experiments.report --check    # verify, exit 1 on a difference
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
RESULTS = HERE / "RESULTS.md"

# Every full-run command behind RESULTS.md's figures and tables.
RUNS = {
    "vanishing_exploding": ["experiments.vanishing_exploding"],
    "influence_balancing": ["experiments.influence_balancing"],
    "char_lm": ["experiments.char_lm", "--jobs", "2"],
    # the single-seed GRU and k = 64 runs: the previous default size and the
    # sampled evaluation (50 000 characters), as they were run
    "char_lm_gru": ["experiments.char_lm", "--cells", "gru", "--seeds", "1",
                    "--hidden", "128", "--valid-chars", "50000",
                    "--name", "char_lm_gru"],
    "char_lm_k64": ["experiments.char_lm", "--k", "64", "--seeds", "1",
                    "--hidden", "128", "--valid-chars", "50000",
                    "--name", "char_lm_k64"],
    "sunspots": ["experiments.sunspots"],
    "stream_cuts": ["experiments.stream_cuts"],
    # the bias sweep on the diagonal recurrences, in a folder of its own
    "modern_bias_sweep": ["experiments.bias_sweep", "--cells", "lru", "min_gru",
                          "min_lstm", "--r-max", "0.9", "0.99", "0.999",
                          "--forward-mode", "--x64", "--no-progress"],
    "long_memory": ["experiments.long_memory", "--no-progress"],
}  # fmt: skip
# Runs whose files would clash with another's (bias_sweep.*) write here.
SUBFOLDER = {"modern_bias_sweep": "modern_bias_sweep"}

FAMILY = {
    "elman_tanh": "Elman tanh",
    "elman_identity": "Elman identity",
    "elman_relu": "Elman relu",
    "lstm": "LSTM",
    "lstm_fbias2": "LSTM, forget bias +2",
    "gru": "GRU",
}


def _f(v, spec: str) -> str:
    """One number as the page prints it; None (NaN/inf in the run) as '—'."""
    return "—" if v is None else format(v, spec)


def _md(head, rows, align=None) -> list[str]:
    align = align or ["---"] * len(head)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def lags_table(d) -> list[str]:
    return _md(
        ["cell", "ρ", "slope", "Lyapunov", "‖J‖", "memory", "last lag / lag 0"],
        [
            [
                FAMILY.get(s["family"], s["family"]),
                _f(s["radius"], "g"),
                _f(s["slope"], "+.3f"),
                _f(s["lyapunov_max"], "+.3f"),
                _f(s["mean_spectral_norm"], ".2f"),
                str(s["memory_length_1pct"]),
                _f(s["norm_ratio_last"], ".1e"),
            ]
            for s in d["summary"]
        ],
    )


def clipping_table(d) -> list[str]:
    c = d["config"]
    name = {
        "none": "none",
        "global_norm": f"`clip_by_global_norm({c['clip_norm']})`",
        "value": f"`clip({c['clip_value']})` element-wise",
    }
    steps = c["train_steps"]
    return _md(
        ["clipping", "‖g‖ max", "update norm max", "non-finite steps",
         "loss, last 10 % of steps"],
        [
            [
                name[m],
                _f(v["max_grad_norm"], ".4g"),
                _f(v["max_update_norm"], ".4g"),
                f"{v['nonfinite_steps']} of {steps}",
                _f(v["final_loss_mean_last_10pct"], ".3g"),
            ]
            for m, v in d["clipping"].items()
        ],
    )  # fmt: skip


def influence_table(d) -> list[str]:
    return _md(
        ["estimator", "mean segment", "updates", "final θ", "abs(θ − θ*)",
         "loss, last 10 % of steps"],
        [
            [
                s["estimator"],
                _f(s["mean_segment_length"], ".1f"),
                str(s["updates"]),
                _f(s["final_theta"], "+.4g"),
                _f(s["distance_to_optimum"], ".4g"),
                _f(s["final_loss"], ".3g"),
            ]
            for s in d["summary"]
        ],
        ["---"] + ["---:"] * 5,
    )  # fmt: skip


def char_lm_table(d) -> list[str]:
    def pm(s, key):  # mean ± s.e. over seeds, or the one seed's value
        if s["seeds"] == 1:
            return _f(s[key], ".3f")
        return f"{_f(s[key], '.3f')} ± {_f(s[key + '_se'], '.3f')}"

    rows = [
        [
            s["run"],
            str(s["seeds"]),
            "/".join(str(u) for u in s["updates_per_seed"]),
            f"{s['backward_steps']:,}",
            _f(s["mean_segment_length"], ".1f"),
            pm(s, "final_valid_bpc"),
            pm(s, "test_bpc"),
            _f(s["train_seconds"], ".0f"),
        ]
        for s in d["summary"]
    ]
    rows.append(
        ["unigram baseline", "", "", "", "", _f(d["unigram_valid_bpc"], ".3f"),
         _f(d["unigram_test_bpc"], ".3f"), ""]
    )  # fmt: skip
    return _md(
        ["run", "seeds", "updates (per seed)", "backward steps", "mean segment",
         "final valid bpc", "test bpc", "training s"],
        rows,
        ["---"] + ["---:"] * 7,
    )  # fmt: skip


def influence_es_table(d) -> list[str]:
    names = {"ES(full": "ES (full unroll, antithetic)", "PES(": "PES (K = {K})",
             "truncated ES(": "truncated ES (K = {K})"}  # fmt: skip
    Ns = sorted({r["N"] for r in d["rows"]})
    rows = []
    for est in dict.fromkeys(r["estimator"] for r in d["rows"]):
        K = est.split("K=")[-1].rstrip(")") if "K=" in est else ""
        name = next((v for k, v in names.items() if est.startswith(k)), est)
        by_n = {r["N"]: r["rms_error"] for r in d["rows"] if r["estimator"] == est}
        rows.append([name.format(K=K)] + [_f(by_n.get(n), ".0f") for n in Ns])
    return _md(["estimator"] + [f"N = {n}" for n in Ns], rows,
               ["---"] + ["---:"] * len(Ns))  # fmt: skip


def sunspots_table(d) -> list[str]:
    seeds = d["config"]["seeds"]
    rows = []
    for m, v in d["test_rmse"].items():
        cell = _f(v, ".2f")
        if m.startswith("GRU") and seeds > 1:
            cell += f" ± {_f(d['test_rmse_std'][m], '.2f')} ({seeds} seeds)"
        rows.append([m, cell])
    return _md(["model", "test RMSE (sunspot number)"], rows, ["---", "---:"])


def stream_cuts_table(d) -> list[str]:
    rows = [
        [
            str(r["k"]),
            r["estimator"],
            _f(r["updates"], ".1f"),
            _f(r["depth"], ".1f"),
            f"{_f(r['rel_bias'], '.2g')} ± {_f(r['bias_se'], '.2g')}",
            _f(r["rel_variance"], ".3g"),
        ]
        for r in d["rows"]
    ]
    return _md(
        ["k", "estimator", "updates", "stream's mean segment",
         "relative bias ± s.e.", "relative variance"],
        rows,
        ["---:", "---"] + ["---:"] * 4,
    )  # fmt: skip


def _k_of(estimator: str) -> float | None:
    """k of a row name like ``tbptt(k=4)`` (None without one)."""
    m = re.search(r"\(k=([\d.]+)\)", estimator)
    return float(m.group(1)) if m else None


def _bias_line(by, cell, step, family, ks, fmt=".3f") -> list[str]:
    return [_f(by.get((cell, step, family, k)), fmt) for k in ks]


def modern_bias_table(d) -> list[str]:
    """TBPTT(k)'s relative bias per cell and point; for the LRU also the
    |λ|-only closed form and the largest gap of the exact closed form."""
    data = d["bias_rows"]
    ks = sorted({r["k"] for r in data if r["family"] == "tbptt"})
    by = {
        (r["cell"], r["train_step"], r["family"], r["k"]): r["rel_bias"] for r in data
    }
    rows = []
    for cell, step in dict.fromkeys((r["cell"], r["train_step"]) for r in data):
        measured = _bias_line(by, cell, step, "tbptt", ks)
        gap = "—"
        if (cell, step, "closed-form", ks[0]) in by:
            gaps = [
                abs(by[(cell, step, "closed-form", k)] - by[(cell, step, "tbptt", k)])
                for k in ks
            ]
            gap = _f(max(gaps), ".1e")
        rows.append([cell, str(step), "measured", *measured, gap])
        if (cell, step, "geometric", ks[0]) in by:
            geo = _bias_line(by, cell, step, "geometric", ks)
            rows.append([cell, str(step), "closed form in abs(λ)", *geo, ""])
    head = ["cell", "train step", "TBPTT(k) bias", *(f"k = {k:g}" for k in ks)]
    return _md(
        [*head, "closed form − measured (max)"],
        rows,
        ["---", "---:", "---"] + ["---:"] * (len(ks) + 1),
    )


def _bias_variance(r) -> str:
    if r is None:
        return "—"
    return f"{_f(r['rel_bias'], '.3f')} / {_f(r['rel_variance'], '.3g')}"


def modern_artbp_table(d) -> list[str]:
    """At the last point: ARTBP's bias / variance per k, and the forward-mode
    estimators (which never truncate), per cell."""
    last = max(r["train_step"] for r in d["bias_rows"])
    rows = [r for r in d["bias_rows"] if r["train_step"] == last]
    names = [r["estimator"] for r in rows if r["estimator"].startswith("artbp")]
    ks = sorted({_k_of(n) for n in names})
    out = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        mine = {r["estimator"]: r for r in rows if r["cell"] == cell}
        for fam in ("artbp-geom", "artbp-poly"):
            vals = [_bias_variance(mine.get(f"{fam}(k={k:g})")) for k in ks]
            out.append([cell, fam, *vals])
        for fam in ("rtrl", "snap1", "uoro"):
            if fam in mine:
                r = mine[fam]
                val = f"{_f(r['rel_bias'], '.1e')} / {_f(r['rel_variance'], '.3g')}"
                out.append([cell, f"{fam} (depth T)", val] + [""] * (len(ks) - 1))
    return _md(
        ["cell", "estimator", *(f"k = {k:g}: bias / variance" for k in ks)],
        out,
        ["---", "---"] + ["---:"] * len(ks),
    )


def long_memory_table(d) -> list[str]:
    """Final held-out score (MSE over the trivial predictor's) per task and
    cell, one column per estimator (mean ± s.e. over seeds; — not run), and
    TBPTT(k)'s exact relative bias at initialisation and at BPTT's end."""
    order = ("tbptt", "artbp", "rtrl", "uoro", "bptt")
    ests = sorted(
        dict.fromkeys(s["estimator"] for s in d["summary"]),
        key=lambda e: order.index(e) if e in order else len(order),
    )
    by = {(s["task"], s["cell"], s["estimator"]): s for s in d["summary"]}
    bias = {(b["task"], b["cell"]): b for b in d["truncation_bias"]}
    k = d["config"]["k"]
    rows = []
    for task, cell in dict.fromkeys((s["task"], s["cell"]) for s in d["summary"]):
        cells = []
        for e in ests:
            s = by.get((task, cell, e))
            cells.append(
                "—" if s is None else
                f"{_f(s['final_score'], '.3f')} ± {_f(s['final_score_se'], '.3f')}"
            )  # fmt: skip
        b = bias[(task, cell)]
        rows.append([task, cell, *cells, _f(b["rel_bias_init"], ".2f"),
                     _f(b["rel_bias_bptt_end"], ".2f")])  # fmt: skip
    names = {"tbptt": f"TBPTT({k})", "artbp": f"ARTBP (poly-tail, {k})",
             "rtrl": "exact RTRL", "uoro": "UORO",
             "bptt": "full BPTT (offline)"}  # fmt: skip
    return _md(
        ["task", "cell", *(names.get(e, e) for e in ests),
         f"TBPTT({k}) bias at init", f"TBPTT({k}) bias at BPTT's end"],
        rows,
        ["---", "---"] + ["---:"] * (len(ests) + 2),
    )  # fmt: skip


# Table name -> (JSON file in experiments/figures, builder).
TABLES = {
    "lags": ("vanishing_exploding.json", lags_table),
    "clipping": ("vanishing_exploding.json", clipping_table),
    "influence_balancing": ("influence_balancing.json", influence_table),
    "char_lm": ("char_lm.json", char_lm_table),
    "char_lm_gru": ("char_lm_gru.json", char_lm_table),
    "char_lm_k64": ("char_lm_k64.json", char_lm_table),
    "sunspots": ("sunspots.json", sunspots_table),
    "influence_es": ("influence_balancing_es.json", influence_es_table),
    "stream_cuts": ("stream_cuts.json", stream_cuts_table),
    "modern_bias": ("modern_bias_sweep/bias_sweep.json", modern_bias_table),
    "modern_artbp": ("modern_bias_sweep/bias_sweep.json", modern_artbp_table),
    "long_memory": ("long_memory.json", long_memory_table),
}

_BLOCK = re.compile(
    r"(<!-- report:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)",
    re.S,
)


def render(text: str, figures: Path = FIGURES) -> str:
    """``text`` with every marked table rebuilt from its JSON file."""

    def table(m):
        name = m.group("name")
        if name not in TABLES:
            raise ValueError(f"RESULTS.md names an unknown table {name!r}")
        path, build = TABLES[name]
        return m.group(1) + "\n".join(_build(name, figures / path, build)) + m.group(4)

    return _BLOCK.sub(table, text)


def _build(name: str, path: Path, build) -> list[str]:
    """Table ``name`` from its JSON file; ``ValueError`` naming the file when
    it is missing, damaged (e.g. truncated) or lacks a field the table needs."""
    try:
        d = json.loads(path.read_text())
        lines = build(d)
    except FileNotFoundError:
        raise ValueError(
            f"{path} (the JSON of table {name!r}) is missing; rerun its experiment."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} (the JSON of table {name!r}) is damaged, not valid JSON "
            f"({e}); rerun its experiment or restore the file."
        ) from None
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(
            f"{path} (the JSON of table {name!r}) lacks what the table needs "
            f"({type(e).__name__}: {e}); rerun its experiment."
        ) from None
    return [*lines, ""]


def check(results: Path = RESULTS, figures: Path = FIGURES) -> list[str]:
    """The tables of ``results`` that differ from their JSON (empty: none).

    Every table in ``TABLES`` must be on the page; each line that differs is
    reported with the table's name.
    """
    text = results.read_text()
    found = {m.group("name") for m in _BLOCK.finditer(text)}
    problems = [
        f"table {n!r} missing from {results.name}" for n in TABLES if n not in found
    ]
    try:
        rendered = render(text, figures)
    except ValueError as e:  # a missing or damaged JSON, named
        return [*problems, str(e)]
    fresh = {m.group("name"): m.group("body") for m in _BLOCK.finditer(rendered)}
    for m in _BLOCK.finditer(text):
        name, body = m.group("name"), m.group("body")
        want = fresh[name]
        if body != want:
            for got_line, want_line in zip(
                body.splitlines(), want.splitlines(), strict=False
            ):
                if got_line != want_line:
                    problems.append(
                        f"table {name!r}: page has {got_line!r}, "
                        f"{TABLES[name][0]} gives {want_line!r}"
                    )
            if len(body.splitlines()) != len(want.splitlines()):
                problems.append(f"table {name!r}: row count differs from its JSON")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="verify only, run nothing")
    g.add_argument(
        "--tables", action="store_true", help="rewrite the tables, run nothing"
    )
    args = p.parse_args(argv)
    if args.check:
        problems = check()
        for line in problems:
            print(line)
        print("RESULTS.md matches its JSON" if not problems else "RESULTS.md drifted")
        return 1 if problems else 0
    if not args.tables:
        for name, command in RUNS.items():
            out = FIGURES / SUBFOLDER.get(name, "")
            cmd = [sys.executable, "-m", *command, "--out", str(out)]
            print(f"running {name}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True)
    RESULTS.write_text(render(RESULTS.read_text()))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
