"""Vanishing and exploding gradients: per-lag profiles, clipping, gated cells.

Three studies, all with jbptt.diagnostics:

1. Per-lag gradient norms ‖(∂h_t/∂h_{t-τ})ᵀ ∂ℓ_t/∂h_t‖ against τ for Elman
   (tanh, identity, relu), LSTM and GRU with the recurrent matrix rescaled to
   spectral radius below, at and above 1, with the fitted log-slope, the
   effective memory length, the top finite-time Lyapunov exponent and the
   mean spectral norm of the step Jacobians.
2. Training on the adding problem (Hochreiter & Schmidhuber 1997) with a relu
   Elman network initialised in the exploding regime, plain SGD on full-BPTT
   gradients, without clipping, with optax ``clip_by_global_norm`` and with
   element-wise ``clip`` (Pascanu et al. 2013).
3. TBPTT tie-in: the per-lag profile, the share of its mass that TBPTT(k)
   drops, and the exact relative bias ‖g_k − g‖/‖g‖ against k, on one plot.

Usage::

    python -m experiments.vanishing_exploding [--quick] [--out results] [--seed 0]
"""

from __future__ import annotations

import csv
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

import jbptt  # noqa: E402
from experiments import _cli  # noqa: E402
from jbptt import cells, diagnostics, truncation  # noqa: E402

PREFIX = "vanishing_exploding"
FAMILIES = {
    "elman_tanh": lambda: cells.elman("tanh"),
    "elman_identity": lambda: cells.elman("identity"),
    "elman_relu": lambda: cells.elman("relu"),
    "lstm": cells.lstm,
    "lstm_fbias2": lambda: cells.lstm(forget_bias=2.0),  # Gers et al. 2000
    "gru": cells.gru,
}


def config(quick: bool) -> dict:
    if quick:
        return dict(
            T=16,
            B=4,
            I=2,
            H=6,
            max_lag=8,
            radii=[0.5, 1.0, 1.5],
            # sized so that the unclipped run diverges (for seeds 0-4) while
            # both clipped runs train: the effect the clipping figure shows
            train_T=30,
            train_H=16,
            train_B=8,
            train_steps=40,
            lr=0.02,
            clip_norm=1.0,
            clip_value=0.1,
            train_radius=1.7,
            bias_T=16,
            ks=[1, 2, 4, 8, 16],
            tie_in=[("elman_tanh", 1.0)],
            families=["elman_tanh", "elman_identity"],
        )
    return dict(
        T=200,
        B=16,
        I=4,
        H=32,
        max_lag=100,
        radii=[0.5, 1.0, 1.5],
        train_T=50,
        train_H=64,
        train_B=32,
        train_steps=600,
        lr=0.01,
        clip_norm=1.0,
        clip_value=0.1,
        train_radius=1.5,
        bias_T=128,
        ks=[1, 2, 4, 8, 16, 32, 64, 128],
        tie_in=[("elman_tanh", 1.0), ("lstm", 1.0), ("gru", 1.0)],
        families=list(FAMILIES),
    )


# ------------------------------------------------------------ rescaling ---


def spectral_radius(W) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(np.asarray(W)))))


def set_radius(W, radius):
    """Rescale a square matrix to the given spectral radius."""
    return W * (radius / spectral_radius(W))


def rescale_recurrent(family: str, params, radius: float, key):
    """Gaussian recurrent weights rescaled to spectral radius ``radius``.

    Elman: W; LSTM/GRU: each gate's H×H block of ``weight_hh`` on its own
    (biases kept: ``lstm_fbias2``'s forget-gate bias is raised by 2 at init).
    """
    if family.startswith("elman"):
        H = params["W"].shape[0]
        W = jax.random.normal(key, (H, H), params["W"].dtype)
        return {**params, "W": set_radius(W, radius)}
    gh, H = params["weight_hh"].shape
    blocks = jax.random.normal(key, (gh // H, H, H), params["weight_hh"].dtype)
    W = jnp.concatenate([set_radius(b, radius) for b in blocks])
    return {**params, "weight_hh": W}


# -------------------------------------------------------- lag profiles ---


def delay_task(key, T, B, I, delay=5):
    """Gaussian inputs; the target is the first input feature ``delay`` steps ago."""
    xs = jax.random.normal(key, (T, B, I))
    ys = jnp.concatenate([jnp.zeros((delay, B, 1)), xs[:-delay, :, :1]])
    return xs, ys


def lag_profiler(family, cfg):
    """Jitted ``(radius, key) -> (norms, summary)``, compiled once per family."""
    model = jbptt.readout(FAMILIES[family](), output_size=1)
    per_lag = jax.jit(
        diagnostics.per_lag_norms(model.cell, model.loss_fn, cfg["max_lag"])
    )

    @jax.jit
    def spectra(params, h0, xs):  # Jacobians of 4 sequences (jacfwd; small N)
        J = diagnostics.step_jacobians(model.cell, params, h0, xs)
        lyap = diagnostics.lyapunov_exponents(J)[:, 0]
        return jnp.mean(lyap), jnp.mean(diagnostics.singular_values(J)[..., 0])

    def run(radius, key):
        k_init, k_w, k_data = jax.random.split(key, 3)
        params = model.init(k_init, cfg["I"], cfg["H"])
        params["cell"] = rescale_recurrent(family, params["cell"], radius, k_w)
        xs, ys = delay_task(k_data, cfg["T"], cfg["B"], cfg["I"])
        h0 = model.cell.initial_state(params, (cfg["B"],))
        norms = np.asarray(per_lag(params, h0, xs, ys).mean)
        lyap, spec = spectra(
            params, jax.tree_util.tree_map(lambda a: a[:4], h0), xs[:, :4]
        )
        finite = norms[np.isfinite(norms) & (norms > 0)]
        return norms, dict(
            family=family,
            radius=radius,
            slope=float(diagnostics.decay_rate(finite)),
            memory_length_1pct=int(diagnostics.memory_length(norms, 0.01)),
            lyapunov_max=float(lyap),
            mean_spectral_norm=float(spec),
            norm_lag0=float(norms[0]),
            norm_ratio_last=float(norms[-1] / norms[0]),
        )

    return run


def plot_lags(profiles, cfg, path):
    fams = cfg["families"]
    ncols = min(3, len(fams))
    nrows = -(-len(fams) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.4 * ncols, 3.8 * nrows), sharey=True, squeeze=False
    )
    for ax in axes.ravel()[len(fams) :]:
        ax.set_visible(False)
    for ax, fam in zip(axes.ravel(), fams, strict=False):
        for radius in cfg["radii"]:
            n = profiles[(fam, radius)]
            ax.semilogy(np.arange(len(n)), n / n[0], label=f"ρ(W) = {radius}")
        ax.set_title(fam)
        ax.set_xlabel("lag τ (steps back)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("‖(∂h_t/∂h_{t-τ})ᵀ ∂ℓ_t/∂h_t‖ / lag 0")
    fig.suptitle(
        f"Per-lag gradient norm at initialisation, mean over t and batch\n"
        f"target = input 5 steps back, T = {cfg['T']}, batch {cfg['B']}, "
        f"H = {cfg['H']}, seed {cfg['seed']}\none line per spectral radius ρ(W) "
        "of the recurrent weights",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------ clipping ---


def adding_problem(key, T, B):
    """Inputs (value, marker); target: the sum of the two marked values,
    scored at the last step only (y_t = (target, mask_t))."""
    k1, k2, k3 = jax.random.split(key, 3)
    vals = jax.random.uniform(k1, (T, B))
    i1 = jax.random.randint(k2, (B,), 0, T // 2)
    i2 = jax.random.randint(k3, (B,), T // 2, T)
    t = jnp.arange(T)[:, None]
    marks = ((t == i1) | (t == i2)).astype(vals.dtype)
    target = jnp.sum(vals * marks, 0)
    mask = (t == T - 1).astype(vals.dtype) * jnp.ones((T, B))
    xs = jnp.stack([vals, marks], -1)
    ys = jnp.stack([jnp.broadcast_to(target, (T, B)), mask], -1)
    return xs, ys


def make_optimizer(method: str, lr: float, clip_norm: float, clip_value: float):
    """SGD, optionally after clipping: ``none``, ``global_norm`` or ``value``."""
    if method == "none":
        return optax.sgd(lr)
    if method == "global_norm":  # g ← g · min(1, c/‖g‖): direction kept
        return optax.chain(optax.clip_by_global_norm(clip_norm), optax.sgd(lr))
    if method == "value":  # g_i ← clip(g_i, −c, c): direction changes
        return optax.chain(optax.clip(clip_value), optax.sgd(lr))
    raise ValueError(
        f"Unknown clipping method {method!r}. It needs to be one of "
        "['global_norm', 'none', 'value']."
    )


def train_adding(method, cfg, key):
    k_init, k_w, k_data = jax.random.split(key, 3)
    model = jbptt.readout(cells.elman("relu"), output_size=1)
    params = model.init(k_init, 2, cfg["train_H"])
    params["cell"] = rescale_recurrent(
        "elman_relu", params["cell"], cfg["train_radius"], k_w
    )

    def loss_fn(p, out_t, y_t):
        pred = model.predict(p, out_t)[..., 0]
        return jnp.mean(y_t[..., 1] * 0.5 * (pred - y_t[..., 0]) ** 2)

    grad_fn = jbptt.value_and_grad(model.cell, loss_fn)
    opt = make_optimizer(method, cfg["lr"], cfg["clip_norm"], cfg["clip_value"])
    B, T = cfg["train_B"], cfg["train_T"]
    h0 = model.cell.initial_state(params, (B,))

    @jax.jit
    def step(params, state, k):
        xs, ys = adding_problem(k, T, B)
        (L, _), g = grad_fn(params, h0, xs, ys)
        updates, state = opt.update(g, state, params)
        return (
            optax.apply_updates(params, updates),
            state,
            L,
            optax.tree.norm(g),
            optax.tree.norm(updates),
        )

    state = opt.init(params)
    rows = []
    keys = jax.random.split(k_data, cfg["train_steps"])
    for i in tqdm(range(cfg["train_steps"]), desc=f"train {method}", leave=False):
        params, state, L, gn, un = step(params, state, keys[i])
        rows.append(
            dict(
                method=method,
                step=i,
                loss=float(L),
                grad_norm=float(gn),
                update_norm=float(un),
            )
        )
    return rows


def plot_training(rows, cfg, path):
    """Loss and gradient norm per SGD step, per clipping method; steps with a
    non-finite loss leave a gap in the unclipped curve (said in the title only
    when there are any)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.6))
    for method in ("none", "global_norm", "value"):
        r = [x for x in rows if x["method"] == method]
        steps = [x["step"] for x in r]
        label = {
            "none": "no clipping",
            "global_norm": f"clip_by_global_norm({cfg['clip_norm']})",
            "value": f"clip({cfg['clip_value']}) element-wise",
        }[method]
        a1.semilogy(steps, [x["loss"] for x in r], label=label)
        a2.semilogy(steps, [x["grad_norm"] for x in r], label=label)
    baseline = 1 / 12  # predicting the mean target: Var(u1 + u2) / 2 = 1/12
    a1.axhline(baseline, color="gray", ls="--", label="predict the mean (1/12)")
    # zoom on the clipped runs; say in words where the unclipped one went
    clipped = [x["loss"] for x in rows if x["method"] != "none"]
    clipped = [v for v in clipped if np.isfinite(v)]
    if clipped:
        a1.set_ylim(0.5 * min(clipped + [baseline]), 10 * max(clipped))
    none = [x for x in rows if x["method"] == "none"]
    bad = [x["step"] for x in none if not np.isfinite(x["loss"])]
    peak = np.nanmax([x["loss"] for x in none if np.isfinite(x["loss"])])
    text = f"no clipping: loss peaks at {peak:.2g}"
    text += f", non-finite from step {bad[0]}" if bad else ""
    a1.text(0.02, 0.02, text, transform=a1.transAxes, fontsize=8, color="C0")
    a1.set_xlabel("SGD step")
    a1.set_ylabel("loss (½ squared error at the last step)")
    a2.set_xlabel("SGD step")
    a2.set_ylabel("‖full-BPTT gradient‖ before clipping")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    gap = ", non-finite steps: gap" if bad else ""
    fig.suptitle(
        f"Adding problem T={cfg['train_T']}, batch {cfg['train_B']}, relu Elman "
        f"H={cfg['train_H']}, ρ(W)={cfg['train_radius']}, SGD lr={cfg['lr']}, "
        f"{cfg['train_steps']} steps, seed {cfg['seed']}{gap}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------ TBPTT tie-in ---


def tbptt_tie_in(family, radius, cfg, key):
    k_init, k_w, k_data = jax.random.split(key, 3)
    model = jbptt.readout(FAMILIES[family](), output_size=1)
    params = model.init(k_init, cfg["I"], cfg["H"])
    params["cell"] = rescale_recurrent(family, params["cell"], radius, k_w)
    T = cfg["bias_T"]
    xs, ys = delay_task(k_data, T, cfg["B"], cfg["I"])
    h0 = model.cell.initial_state(params, (cfg["B"],))
    prof = jax.jit(
        diagnostics.per_lag_norms(model.cell, model.loss_fn, T, per_step=True)
    )(params, h0, xs, ys)
    ws = jnp.stack([truncation.tbptt(T, k) for k in cfg["ks"]])
    bias = jax.jit(
        jax.vmap(
            diagnostics.relative_bias(model.cell, model.loss_fn),
            in_axes=(None, None, None, None, 0),
        )
    )(params, h0, xs, ys, ws)
    dropped = jax.vmap(diagnostics.dropped_fraction, in_axes=(None, 0))(
        prof.per_step, ws
    )
    return np.asarray(prof.mean), np.asarray(dropped), np.asarray(bias)


def plot_tie_in(results, cfg, path):
    fig, axes = plt.subplots(
        1,
        len(results),
        figsize=(max(4.5 * len(results), 7), 4.4),
        sharey=True,
        squeeze=False,
    )
    axes = axes[0]
    items = results.items()
    shown, zeros = [], []
    for ax, ((fam, radius), (prof, dropped, bias)) in zip(axes, items, strict=True):
        lags = np.arange(len(prof))
        ax.loglog(lags[1:], prof[1:] / prof[0], label="per-lag norm / lag 0 (x = τ)")
        # k = T is full BPTT: its bias and dropped mass are 0 (up to
        # round-off), which a log axis cannot show; marked at the axis floor
        # instead of plotted at 1e-16
        ks = np.asarray(cfg["ks"])
        exact = (bias <= 1e-12) | (ks >= cfg["bias_T"])
        ax.loglog(
            ks[~exact],
            dropped[~exact],
            "o-",
            color="C1",
            label="profile mass TBPTT(k) drops (x = k)",
        )
        ax.loglog(
            ks[~exact],
            bias[~exact],
            "s-",
            color="C2",
            label="exact ‖g_k − g‖/‖g‖ (x = k)",
        )
        shown.extend(
            np.concatenate([prof[1:] / prof[0], dropped[~exact], bias[~exact]])
        )
        zeros.append((ax, ks[exact]))
        ax.set_title(f"{fam}, ρ(W) = {radius}")
        ax.set_xlabel("lag τ  /  truncation length k")
        ax.grid(True, which="both", alpha=0.3)
    _cli.set_log_scale(axes[0], shown, label="relative size")
    for ax, kz in zeros:
        if len(kz):
            _cli.mark_zeros(
                ax,
                kz,
                np.zeros(len(kz)),
                color="C2",
                ms=8,
                label="bias and dropped mass exactly 0 (k = T: full BPTT)",
            )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)
    axes[0].set_ylabel("relative size")
    fig.suptitle(
        f"Per-lag profile beside TBPTT(k)'s dropped mass and exact bias: target = "
        f"input 5 steps back,\nT = {cfg['bias_T']}, batch {cfg['B']}, "
        f"H = {cfg['H']}, at initialisation, seed {cfg['seed']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------- main ---


def _finite_or_none(obj):
    """NaN/inf → None, so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# Flags: every setting of ``config`` (``--quick`` sets the quick ones as
# defaults only; flags given explicitly are kept).
_TYPES = dict(
    T=_cli.positive_int,
    B=_cli.positive_int,
    I=_cli.positive_int,
    H=_cli.positive_int,
    max_lag=_cli.positive_int,
    train_T=_cli.positive_int,
    train_H=_cli.positive_int,
    train_B=_cli.positive_int,
    train_steps=_cli.positive_int,
    lr=_cli.positive_float,
    clip_norm=_cli.positive_float,
    clip_value=_cli.positive_float,
    train_radius=_cli.positive_float,
    bias_T=_cli.positive_int,
)
_HELP = dict(
    T="sequence length of the per-lag profiles",
    B="sequences per batch (profiles, tie-in)",
    I="input size (profiles, tie-in)",
    H="hidden size (profiles, tie-in)",
    max_lag="lags profiled (≤ T)",
    train_T="adding-problem length",
    train_H="hidden size of the adding-problem network",
    train_B="adding-problem batch",
    train_steps="SGD steps per clipping method",
    lr="SGD learning rate",
    clip_norm="clip_by_global_norm threshold",
    clip_value="element-wise clip threshold",
    train_radius="spectral radius of the adding-problem network at init",
    bias_T="sequence length of the TBPTT tie-in",
)


def _quick_defaults() -> dict:
    q = config(True)
    out = {k: q[k] for k in _TYPES}
    out.update(
        radii=q["radii"],
        ks=q["ks"],
        families=q["families"],
        tie_in=[f for f, _ in q["tie_in"]],
    )
    return out


def parse_args(argv=None):
    full = config(False)
    p = _cli.parser(
        "python -m experiments.vanishing_exploding", __doc__.split("\n\n")[0]
    )
    for name, typ in _TYPES.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=typ,
            default=full[name],
            help=_HELP[name],
        )
    p.add_argument(
        "--radii",
        type=_cli.positive_float,
        nargs="+",
        default=full["radii"],
        help="spectral radii of the per-lag profiles",
    )
    p.add_argument(
        "--ks",
        type=_cli.positive_int,
        nargs="+",
        default=full["ks"],
        help="TBPTT lengths of the tie-in (each ≤ bias-T)",
    )
    p.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILIES),
        default=full["families"],
        help="cells profiled",
    )
    p.add_argument(
        "--tie-in",
        nargs="+",
        choices=list(FAMILIES),
        default=[f for f, _ in full["tie_in"]],
        help="cells of the TBPTT tie-in (at ρ(W) = 1)",
    )
    p.add_argument("--seed", type=_cli.nonneg_int, default=0, help="PRNG seed")
    _cli.add_quick(p, {"(see config)": "quick"})
    p.add_argument("--out", default="results", help="output directory")
    args = _cli.parse(p, argv, _quick_defaults())
    if args.max_lag > args.T:
        p.error(f"--max-lag must be ≤ T = {args.T}, got {args.max_lag}")
    if max(args.ks) > args.bias_T:
        p.error(f"--ks must be ≤ bias-T = {args.bias_T}, got {args.ks}")
    if len(set(args.ks)) != len(args.ks):
        p.error(f"--ks must be distinct, got {args.ks}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    # float64: identity Elman at ρ = 1.5 reaches 1.5^T, beyond float32's range
    jax.config.update("jax_enable_x64", True)
    cfg = {k: getattr(args, k) for k in _TYPES}
    cfg.update(
        radii=list(args.radii),
        ks=sorted(args.ks),
        families=list(args.families),
        tie_in=[(f, 1.0) for f in args.tie_in],
    )
    os.makedirs(args.out, exist_ok=True)
    key = jax.random.key(args.seed)
    t0 = time.time()
    run = _cli.Run()

    def path(name):
        return os.path.join(args.out, f"{PREFIX}_{name}")

    def write(name, rows):
        run.step(name, _write_csv, path(name), rows)
        run.wrote(path(name))

    drawn = {**cfg, "seed": args.seed}  # the figures' titles name the seed

    def draw(name, fn, *a):
        if run.step(name, fn, *a, path(name)) is None:
            run.wrote(path(name))

    # 1. per-lag profiles
    profiles, summary, lag_rows = {}, [], []
    grid = [(f, r) for f in cfg["families"] for r in cfg["radii"]]
    profilers = {f: lag_profiler(f, cfg) for f in cfg["families"]}
    for i, (fam, radius) in enumerate(tqdm(grid, desc="lag profiles")):
        norms, s = profilers[fam](radius, jax.random.fold_in(key, i))
        profiles[(fam, radius)] = norms
        summary.append(s)
        lag_rows += [
            dict(
                family=fam,
                radius=radius,
                lag=t,
                norm=float(n),
                norm_rel=float(n / norms[0]),
            )
            for t, n in enumerate(norms)
        ]
    write("lags.csv", lag_rows)
    write("summary.csv", summary)
    draw("lags.png", plot_lags, profiles, drawn)

    # 2. clipping
    train_rows = []
    for method in ("none", "global_norm", "value"):
        train_rows += train_adding(method, cfg, jax.random.fold_in(key, 1000))
    write("clipping.csv", train_rows)
    draw("clipping.png", plot_training, train_rows, drawn)
    clip_summary = {}
    for method in ("none", "global_norm", "value"):
        r = [x for x in train_rows if x["method"] == method]
        tail = [x["loss"] for x in r[-max(1, len(r) // 10) :]]
        clip_summary[method] = dict(
            final_loss_mean_last_10pct=float(np.mean(tail)),
            nonfinite_steps=int(sum(not np.isfinite(x["loss"]) for x in r)),
            max_grad_norm=float(np.nanmax([x["grad_norm"] for x in r])),
            max_update_norm=float(np.nanmax([x["update_norm"] for x in r])),
        )

    # 3. TBPTT tie-in
    tie = {}
    for j, (fam, radius) in enumerate(cfg["tie_in"]):
        tie[(fam, radius)] = tbptt_tie_in(
            fam, radius, cfg, jax.random.fold_in(key, 2000 + j)
        )
    write(
        "tbptt.csv",
        [
            dict(
                family=f,
                radius=r,
                k=k,
                dropped_fraction=float(d),
                relative_bias=float(b),
            )
            for (f, r), (_, dropped, bias) in tie.items()
            for k, d, b in zip(cfg["ks"], dropped, bias, strict=True)
        ],
    )
    draw("tbptt.png", plot_tie_in, tie, drawn)

    report = dict(
        config=cfg,
        quick=args.quick,
        seconds=round(time.time() - t0, 1),
        summary=summary,
        clipping=clip_summary,
    )
    table = [
        {
            "study": "clipping",
            "case": m,
            "final loss (last 10%)": c["final_loss_mean_last_10pct"],
            "non-finite steps": c["nonfinite_steps"],
            "max ‖g‖": c["max_grad_norm"],
        }
        for m, c in clip_summary.items()
    ] + [
        {
            "study": "lag profile",
            "case": f"{s['family']} ρ={s['radius']}",
            "log-slope": s["slope"],
        }
        for s in summary
    ]
    record = run.finish(
        os.path.join(args.out, f"{PREFIX}.json"),
        _finite_or_none(report),
        config=_finite_or_none(cfg),
        seed=args.seed,
        rows=table,
        columns=[
            "study",
            "case",
            "final loss (last 10%)",
            "non-finite steps",
            "max ‖g‖",
            "log-slope",
        ],
    )
    return record


if __name__ == "__main__":
    main()
