r"""Online learning of long-range memory: TBPTT, ARTBP, exact diagonal RTRL
and UORO against full BPTT, on the LRU, minGRU and LSTM.

Tasks (``--delays``; ``--no-delayed-sum`` leaves out the last):

* ``recall(D)``: a stream of episodes of ``D + 1`` steps, each starting with
  a reset (the state restarts, no gradient crosses; ``resets=`` of
  :meth:`jbptt.train.Trainer.run`). Channel 0 carries a cue ``c ~ N(0, 1)``
  at the episode's first step and zeros after it; channel 1 carries
  distractor noise ``N(0, 1)`` at every step. The answer is due at the
  episode's last step, ``D`` steps after the cue: the loss is
  ``(ŷ − c)²`` there and zero elsewhere. Score: the mean squared error at
  the recall step over ``E[c²]`` (1 for the trivial predictor ŷ = 0).
  The LRU starts from the ring initialisation on ``[--r-min, --r-max]``
  (default 0.99–0.9999: a unit keeps ``|λ|^D`` of the cue, 0.7 on average
  at D = 64); minGRU and the LSTM start from their defaults and run the
  delays up to ``--gated-max-D`` only.
* ``delayed_sum``: ``experiments/tasks.py``'s ``delayed_sum((2, 8, 24))``
  along one unbroken stream, squared loss at every step. Score: the mean
  squared error over ``E[y²]`` (1 for ŷ = 0).

Estimators, all with Adam, global-norm clipping and the same number of
updates ``--updates``:

* ``tbptt``: TBPTT(k) online along the stream (``--updates · k`` steps).
* ``artbp``: ARTBP at mean segment length k, poly-tail schedule
  (``estimators.artbp_matched(k, "poly_tail")``); its update count is random
  with mean ``--updates``.
* ``rtrl``: exact RTRL (``forward_mode.rtrl()``), which on a diagonal cell
  carries the diagonal influence (Zucchet et al. 2023); one update every k
  steps with the sum of the per-step gradients since the last one. Diagonal
  cells only (dense RTRL on the LSTM is O(H⁴) a step).
* ``uoro``: UORO (``forward_mode.uoro()``), one update every k steps. Real
  states only (not the LRU's complex state).
* ``bptt``: full BPTT offline: each update on a fresh batch of whole
  sequences (one episode of ``recall(D)``; ``--bptt-T`` steps of
  ``delayed_sum``) from the zero state.

Every configuration runs over ``--seeds`` seeds (initialisation, data and
the estimators' draws); the score on a fixed held-out batch is recorded at
``--evals`` points along training against updates and training wall-clock
(compilation and evaluation excluded). For each task and cell, TBPTT(k)'s
exact relative bias ‖g_k − g‖/‖g‖ against the full gradient on a held-out
window of online data is measured at initialisation and at the end of BPTT's
training (seed 0): what truncation at depth k drops.

Run ``python -m experiments.long_memory --help``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbptt
from experiments import _cli, tasks
from jbptt import estimators, forward_mode, truncation

CELLS = ("lru", "min_gru", "lstm")
ESTIMATORS = ("tbptt", "artbp", "rtrl", "uoro", "bptt")
DIAGONAL = ("lru", "min_gru", "min_lstm")  # cells with exact diagonal RTRL
REAL_STATE = ("min_gru", "min_lstm", "lstm", "gru", "elman")  # UORO's
DELAYED_SUM = (2, 8, 24)


# ------------------------------------------------------------------ tasks ---


class Task(NamedTuple):
    """A task: ``stream(key, T, B) -> (xs, ys, resets)`` for online runs,
    ``batch(key, B) -> (xs, ys)`` for BPTT's whole sequences, and the
    trivial predictor's mean squared error (what the score divides by)."""

    name: str
    memory: int  # steps between the answer and the input it needs
    input_size: int
    stream: object
    batch: object


def recall(D: int, noise: float = 1.0) -> Task:
    """Cue recall after ``D`` steps (module docstring). Targets ``ys`` are
    ``[..., 2]``: the cue and the mask of the recall step."""
    noise_scale = noise
    L = D + 1  # an episode: cue at its step 0, answer at its step D

    def stream(key, T, B):
        k_cue, k_noise = jax.random.split(key)
        n_ep = -(-T // L)
        cues = jax.random.normal(k_cue, (n_ep, B))
        pos = jnp.arange(T) % L
        ep = jnp.arange(T) // L
        first = (pos == 0)[:, None]
        last = (pos == D)[:, None]
        cue = cues[ep]  # [T, B]
        noise = noise_scale * jax.random.normal(k_noise, (T, B))
        xs = jnp.stack([jnp.where(first, cue, 0.0), noise], axis=-1)
        ys = jnp.stack([jnp.where(last, cue, 0.0), jnp.broadcast_to(last, (T, B))], -1)
        resets = jnp.broadcast_to(first, (T, B))
        return xs, ys.astype(xs.dtype), resets

    def batch(key, B):
        xs, ys, _ = stream(key, L, B)
        return xs, ys

    return Task(f"recall(D={D})", D, 2, stream, batch)


def delayed_sum(bptt_T: int) -> Task:
    """``tasks.delayed_sum((2, 8, 24))`` with a mask of ones (every step
    scored); BPTT's sequences have ``bptt_T`` steps."""
    base = tasks.delayed_sum(DELAYED_SUM)

    def stream(key, T, B):
        xs, ys = base.sample(key, T, B)
        return xs, jnp.concatenate([ys, jnp.ones_like(ys)], -1), None

    def batch(key, B):
        return stream(key, bptt_T, B)[:2]

    return Task(
        "delayed_sum(2,8,24)", max(DELAYED_SUM), len(DELAYED_SUM), stream, batch
    )


def make_model(cell: str, r_min: float = 0.0, r_max: float = 1.0):
    """Cell with a linear readout (the LRU, ring-initialised on
    ``[r_min, r_max]``, read out as ``V [Re h; Im h] + c``,
    ``tasks.make_model``) and the masked squared loss, batch mean."""
    if cell == "lru":
        cell = jbptt.cells.lru(r_min=r_min, r_max=r_max)
    model = tasks.make_model(cell, 1)

    def loss_fn(params, out, y):
        err = model.predict(params, out)[..., 0] - y[..., 0]
        return jnp.mean(y[..., 1] * err**2)

    return model, loss_fn


# ------------------------------------------------------------- estimators ---


def online_estimator(name: str, k: int):
    if name == "tbptt":
        return estimators.tbptt(k)
    if name == "artbp":
        return estimators.artbp_matched(k, "poly_tail")
    if name == "rtrl":
        return forward_mode.rtrl().every(k)
    if name == "uoro":
        return forward_mode.uoro().every(k)
    raise ValueError(name)


def applies(cell: str, est: str, task: Task | None = None, args=None) -> str | None:
    """Why ``est`` is not run on ``cell`` for ``task`` (None: it is)."""
    if est == "rtrl" and cell not in DIAGONAL:
        return "exact diagonal RTRL needs a diagonal cell (dense RTRL: O(H⁴)/step)"
    if est == "uoro" and cell not in REAL_STATE:
        return "UORO needs a real state (the LRU's is complex)"
    if (
        task is not None
        and cell != "lru"
        and task.name.startswith("recall")
        and task.memory > args.gated_max_D
    ):
        return (
            f"recall beyond D = {args.gated_max_D} on the gated cells: at their "
            "default initialisation a unit keeps about half its state a step, "
            "so no estimator learns even that delay (--gated-max-D)"
        )
    return None


# ------------------------------------------------------------------- runs ---


class Curve(NamedTuple):
    updates: list
    seconds: list
    score: list


class Setup(NamedTuple):
    """What the runs of one task and cell share: the model, its loss, the
    held-out score and the optimizer (one object, so compiled steps are
    reused from seed to seed)."""

    task: Task
    cell: str
    model: object
    loss_fn: object
    score: object
    opt: object


def make_setup(task: Task, cell: str, args) -> Setup:
    model, loss_fn = make_model(cell, args.r_min, args.r_max)
    return Setup(task, cell, model, loss_fn, evaluator(model, loss_fn, task, args),
                 optimizer(args, args.updates))  # fmt: skip


def evaluator(model, loss_fn, task: Task, args):
    """Jitted score on a fixed held-out batch (the same for every run):
    whole episodes of ``recall(D)``, ``--eval-T`` steps of ``delayed_sum``,
    from the zero state."""
    if task.name.startswith("recall"):
        xs, ys = task.batch(jax.random.key(10_000), args.eval_batch)
    else:
        xs, ys, _ = task.stream(jax.random.key(10_000), args.eval_T, args.eval_batch)
    forward = jbptt.loss(model.cell, loss_fn)
    # loss_fn is a batch mean: L = Σ_t mean_b; the trivial predictor's L
    denom = float(jnp.sum(ys[..., 1] * ys[..., 0] ** 2) / args.eval_batch)

    @jax.jit
    def score(params):
        h0 = model.cell.initial_state(params, (args.eval_batch,))
        L, _ = forward(params, h0, xs, ys)
        return L / denom

    return lambda params: float(score(params))


def eval_points(updates: int, n: int) -> list[int]:
    """The update counts where runs are scored (besides 0)."""
    return sorted({max(1, round(updates * (i + 1) / n)) for i in range(n)})


def optimizer(args, total_updates):
    lr = optax.cosine_decay_schedule(args.lr, max(1, total_updates), alpha=0.1)
    return optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(lr))


def init_params(setup: Setup, seed: int, args):
    k_init = jax.random.split(jax.random.key(seed), 3)[0]
    return setup.model.init(k_init, setup.task.input_size, args.hidden)


def online_trainer(setup: Setup, est_name: str, args):
    """The :class:`jbptt.train.Trainer` of one estimator (shared by seeds)."""
    return jbptt.train.Trainer(
        setup.model.cell, setup.loss_fn, setup.opt,
        online_estimator(est_name, args.k),
        buckets=jbptt.train.Buckets(min_bucket=args.k, max_buckets=3),
    )  # fmt: skip


def run_online(setup: Setup, trainer, seed: int, args) -> tuple[Curve, object]:
    """One online run along a stream of ``--updates · k`` steps."""
    _, k_data, k_est = jax.random.split(jax.random.key(seed), 3)
    params = init_params(setup, seed, args)
    xs, ys, resets = setup.task.stream(k_data, args.updates * args.k, args.batch)
    state = trainer.init(params, k_est)
    points = eval_points(args.updates, args.evals)
    curve = Curve([0], [0.0], [setup.score(params)])
    nxt = [0]

    def record(e):
        u = e.index + 1
        if nxt[0] < len(points) and u >= points[nxt[0]]:
            while nxt[0] < len(points) and u >= points[nxt[0]]:
                nxt[0] += 1
            curve.updates.append(u)
            curve.seconds.append(e.seconds)
            curve.score.append(setup.score(e.state.params))

    state, hist = trainer.run(state, xs, ys, resets=resets, callbacks=[record])
    n = len(hist.length)
    if curve.updates[-1] != n:  # ARTBP: fewer updates than the last point
        curve.updates.append(n)
        curve.seconds.append(float(hist.seconds))
        curve.score.append(setup.score(state.params))
    return curve, state.params


def bptt_update(setup: Setup, args):
    """One jitted full-BPTT update on a fresh batch of whole sequences."""
    vg = jbptt.value_and_grad(setup.model.cell, setup.loss_fn)
    task, opt = setup.task, setup.opt

    @jax.jit
    def update(params, opt_state, key, i):
        xs, ys = task.batch(jax.random.fold_in(key, i), args.batch)
        h0 = setup.model.cell.initial_state(params, (args.batch,))
        (L, _), g = vg(params, h0, xs, ys)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, L

    return update


def run_bptt(setup: Setup, update, seed: int, args) -> tuple[Curve, object]:
    """Full BPTT offline: ``--updates`` updates, each on fresh sequences."""
    k_data = jax.random.split(jax.random.key(seed), 3)[1]
    params = init_params(setup, seed, args)
    opt_state = setup.opt.init(params)
    update.lower(params, opt_state, k_data, 0).compile()  # not timed
    points = set(eval_points(args.updates, args.evals))
    curve = Curve([0], [0.0], [setup.score(params)])
    clock = 0.0
    for i in range(args.updates):
        t0 = time.perf_counter()
        params, opt_state, L = update(params, opt_state, k_data, i)
        jax.block_until_ready(L)
        clock += time.perf_counter() - t0
        if i + 1 in points:
            curve.updates.append(i + 1)
            curve.seconds.append(clock)
            curve.score.append(setup.score(params))
    return curve, params


def truncation_bias(setup: Setup, params, args) -> float:
    """TBPTT(k)'s relative bias ‖g_k − g‖/‖g‖ against full BPTT on a
    held-out window of online data (``--bias-T`` steps, at least two
    episodes; seed-independent), at ``params``."""
    task = setup.task
    T = max(args.bias_T, 2 * (task.memory + 1))
    xs, ys, resets = task.stream(jax.random.key(20_000), T, args.batch)
    h0 = setup.model.cell.initial_state(params, (args.batch,))
    vg = jbptt.value_and_grad(setup.model.cell, setup.loss_fn)

    def flat(w):
        _, g = vg(params, h0, xs, ys, w, resets=resets)
        return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(g)])

    g = flat(truncation.full(T))
    gk = flat(truncation.tbptt(T, args.k))
    return float(jnp.linalg.norm(gk - g) / jnp.linalg.norm(g))


# -------------------------------------------------------------------- CLI ---

QUICK = dict(
    delays=[16],
    cells=["lru"],
    estimators=["tbptt", "rtrl", "bptt"],
    k=4,
    hidden=8,
    batch=8,
    updates=120,
    seeds=2,
    evals=2,
    eval_batch=32,
    eval_T=64,
    bptt_T=32,
    bias_T=48,
    lr=1e-2,
    no_delayed_sum=True,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = _cli.parser("python -m experiments.long_memory", __doc__.split("\n\n")[0])
    p.add_argument("--delays", nargs="+", type=_cli.positive_int,
                   default=[64, 256, 1024], help="recall delays D")  # fmt: skip
    p.add_argument("--no-delayed-sum", dest="no_delayed_sum", action="store_true",
                   help="leave out the delayed_sum((2, 8, 24)) task")  # fmt: skip
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS),
                   help="cells")  # fmt: skip
    p.add_argument("--estimators", nargs="+", choices=ESTIMATORS,
                   default=list(ESTIMATORS), help="estimators")  # fmt: skip
    p.add_argument("--k", type=_cli.positive_int, default=16,
                   help="truncation depth: TBPTT(k), ARTBP's mean segment, "
                   "the forward-mode estimators' update interval")  # fmt: skip
    p.add_argument("--hidden", type=_cli.positive_int, default=16, help="units")
    p.add_argument("--r-min", dest="r_min", type=_cli.probability, default=0.99,
                   help="LRU ring initialisation: smallest |λ|")  # fmt: skip
    p.add_argument("--r-max", dest="r_max", type=_cli.probability, default=0.9999,
                   help="LRU ring initialisation: largest |λ|")  # fmt: skip
    p.add_argument("--gated-max-D", dest="gated_max_D", type=_cli.positive_int,
                   default=64, help="longest recall delay run on minGRU and the "
                   "LSTM (the LRU runs every delay)")  # fmt: skip
    p.add_argument(
        "--noise",
        type=_cli.nonneg_float,
        default=1.0,
        help="recall: the distractor channel's standard deviation",
    )
    p.add_argument("--batch", type=_cli.positive_int, default=16, help="streams B")
    p.add_argument(
        "--updates",
        type=_cli.positive_int,
        default=1024,
        help="updates per run (online: a stream of updates·k steps)",
    )
    p.add_argument("--seeds", type=_cli.positive_int, default=3, help="seeds")
    p.add_argument("--seed", type=_cli.nonneg_int, default=0, help="first seed")
    p.add_argument("--evals", type=_cli.positive_int, default=8,
                   help="evaluation points per run")  # fmt: skip
    p.add_argument("--eval-batch", dest="eval_batch", type=_cli.positive_int,
                   default=256, help="held-out sequences")  # fmt: skip
    p.add_argument("--eval-T", dest="eval_T", type=_cli.positive_int, default=256,
                   help="held-out delayed_sum length")  # fmt: skip
    p.add_argument("--bptt-T", dest="bptt_T", type=_cli.positive_int, default=128,
                   help="BPTT's sequence length on delayed_sum")  # fmt: skip
    p.add_argument(
        "--bias-T",
        dest="bias_T",
        type=_cli.positive_int,
        default=256,
        help="window of the TBPTT(k) bias measurement (≥ 2(D+1))",
    )
    p.add_argument("--lr", type=_cli.positive_float, default=3e-3,
                   help="Adam learning rate (cosine decay to a tenth)")  # fmt: skip
    p.add_argument("--clip", type=_cli.positive_float, default=1.0,
                   help="global-norm clip")  # fmt: skip
    p.add_argument("--x64", action="store_true", help="float64 (default float32)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar")  # fmt: skip
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--name", type=_cli.run_name, default="long_memory",
                   help="file stem: NAME.{csv,json,png}")  # fmt: skip
    p.add_argument("--replot", action="store_true",
                   help="only redraw NAME.png from its CSV and JSON")  # fmt: skip
    _cli.add_quick(p, QUICK)
    args = _cli.parse(p, argv, QUICK)
    if args.k < 2:
        p.error(f"--k must be ≥ 2 (ARTBP's mean segment length), got {args.k}")
    if args.r_min >= args.r_max:
        p.error(f"--r-min must be < --r-max, got {args.r_min} and {args.r_max}")
    if args.no_delayed_sum and not args.delays:
        p.error("no task: give --delays or drop --no-delayed-sum")
    return args


def task_list(args) -> list[Task]:
    out = [recall(D, args.noise) for D in dict.fromkeys(args.delays)]
    if not args.no_delayed_sum:
        out.append(delayed_sum(args.bptt_T))
    return out


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for one value)."""
    v = np.asarray(values, float)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se


def replot(out: Path, name: str) -> Path:
    """Redraw ``NAME.png`` from ``NAME.csv`` and ``NAME.json`` (no training),
    with the settings the run recorded."""
    import json

    meta = json.loads((out / f"{name}.json").read_text())
    with open(out / f"{name}.csv") as f:
        rows = [
            {k: v if k in ("task", "cell", "estimator") else float(v)
             for k, v in r.items()}
            for r in csv.DictReader(f)
        ]  # fmt: skip
    args = argparse.Namespace(**meta["config"])
    return plot(out / f"{name}.png", rows, meta, args)


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        print(f"wrote:\n  {replot(Path(args.out), args.name)}")
        return None
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    t_start = time.perf_counter()
    seeds = list(range(args.seed, args.seed + args.seeds))
    tlist = task_list(args)
    skipped = {
        (task.name, cell, est): why
        for task in tlist
        for cell in args.cells
        for est in args.estimators
        if (why := applies(cell, est, task, args))
    }
    n_runs = len(seeds) * sum(
        (t.name, c, e) not in skipped
        for t in tlist
        for c in args.cells
        for e in args.estimators
    )
    bar = None if args.no_progress or args.quick else _progress(n_runs)
    rows, summary, biases = [], [], []
    for task in tlist:
        for cell in args.cells:
            if all((task.name, cell, e) in skipped for e in args.estimators):
                continue
            setup = make_setup(task, cell, args)
            bptt_params = None
            for est in args.estimators:
                if (task.name, cell, est) in skipped:
                    continue
                if est == "bptt":
                    step = bptt_update(setup, args)
                else:
                    step = online_trainer(setup, est, args)
                runs = []
                for seed in seeds:
                    if est == "bptt":
                        curve, params = run_bptt(setup, step, seed, args)
                        bptt_params = params if seed == seeds[0] else bptt_params
                    else:
                        curve, _ = run_online(setup, step, seed, args)
                    runs.append(curve)
                    for u, sec, sc in zip(*curve, strict=True):
                        rows.append(
                            {"task": task.name, "D": task.memory, "cell": cell,
                             "estimator": est, "seed": seed, "updates": u,
                             "seconds": sec, "score": sc}
                        )  # fmt: skip
                    _log(
                        bar,
                        f"{task.name:19s} {cell:7s} {est:5s} seed {seed}: score "
                        f"{curve.score[0]:.3f} -> {curve.score[-1]:.3f} "
                        f"({curve.updates[-1]} updates, {curve.seconds[-1]:.1f} s)",
                    )
                    if bar is not None:
                        bar.update(1)
                summary.append(summarize(task, cell, est, runs))
            b = {"task": task.name, "D": task.memory, "cell": cell, "k": args.k,
                 "rel_bias_init": truncation_bias(
                     setup, init_params(setup, seeds[0], args), args),
                 "rel_bias_bptt_end": None}  # fmt: skip
            if bptt_params is not None:
                b["rel_bias_bptt_end"] = truncation_bias(setup, bptt_params, args)
            biases.append(b)
    if bar is not None:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "seeds": seeds,
        "tasks": [t.name for t in tlist],
        "summary": summary,
        "truncation_bias": biases,
        "skipped": [{"task": t, "cell": c, "estimator": e, "why": w}
                    for (t, c, e), w in skipped.items()],
        "seconds": time.perf_counter() - t_start,
    }  # fmt: skip
    run = _cli.Run()
    stem = out / args.name
    if run.step("CSV", write_csv, f"{stem}.csv", rows) is not None:
        run.wrote(f"{stem}.csv")
    if run.step("plot", plot, f"{stem}.png", rows, meta, args) is not None:
        run.wrote(f"{stem}.png")
    for w in dict.fromkeys(skipped.values()):  # each reason once
        which = sorted({f"{e} on {c}" for (_, c, e), w_ in skipped.items() if w_ == w})
        run.notes.append(f"not run ({', '.join(which)}): {w}")
    return run.finish(
        f"{stem}.json", meta, config=dict(vars(args)), seed=args.seed,
        rows=[{"task": s["task"], "cell": s["cell"], "estimator": s["estimator"],
               "updates": s["updates"],
               "final score": f"{s['final_score']:.3f} ± {s['final_score_se']:.3f}",
               "train s": s["train_seconds"]} for s in summary],
    )  # fmt: skip


def summarize(task: Task, cell: str, est: str, runs: list[Curve]) -> dict:
    """One table row: a task, cell and estimator over its seeds."""
    final = mean_se([c.score[-1] for c in runs])
    return {
        "task": task.name,
        "D": task.memory,
        "cell": cell,
        "estimator": est,
        "seeds": len(runs),
        "updates": float(np.mean([c.updates[-1] for c in runs])),
        "initial_score": float(np.mean([c.score[0] for c in runs])),
        "final_score": final[0],
        "final_score_se": final[1],
        "best_score": float(np.mean([min(c.score) for c in runs])),
        "train_seconds": float(np.mean([c.seconds[-1] for c in runs])),
    }


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return path


def _progress(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is optional
        return None
    return tqdm(total=total, unit="run", desc="long memory", mininterval=2.0)


def _log(bar, line: str) -> None:
    if bar is None:
        print(line, flush=True)
    else:
        bar.write(line)


LABELS = {
    "tbptt": "TBPTT(k)",
    "artbp": "ARTBP, poly-tail, mean segment k",
    "rtrl": "exact diagonal RTRL, update every k",
    "uoro": "UORO, update every k",
    "bptt": "full BPTT, offline",
}
STYLE = {"tbptt": "C0", "artbp": "C1", "rtrl": "C2", "uoro": "C4", "bptt": "k"}


def _band(rows, task, cell, est):
    """Mean score over seeds at each evaluation point, its standard error,
    and the mean update count and wall-clock there."""
    r = [x for x in rows if (x["task"], x["cell"], x["estimator"]) == (task, cell, est)]
    seeds = sorted({x["seed"] for x in r})
    per = [[x for x in r if x["seed"] == s] for s in seeds]
    n = min(len(p) for p in per)
    cols = [[p[i] for p in per] for i in range(n)]
    mean_, se = zip(*(mean_se([x["score"] for x in c]) for c in cols), strict=True)
    upd = [np.mean([x["updates"] for x in c]) for c in cols]
    sec = [np.mean([x["seconds"] for x in c]) for c in cols]
    return np.array(upd), np.array(sec), np.array(mean_), np.array(se)


def plot(path, rows, meta, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((s["task"], s["cell"]) for s in meta["summary"]))
    tasks_ = list(dict.fromkeys(t for t, _ in groups))
    cells = list(dict.fromkeys(c for _, c in groups))
    left_out = {(s["task"], s["cell"]) for s in meta["skipped"]}
    width = max(8.0, 3.2 * 2 * len(cells))
    fig, axes = plt.subplots(
        len(tasks_), 2 * len(cells), squeeze=False,
        figsize=(width, 2.6 * len(tasks_) + 1.6),
    )  # fmt: skip
    handles = {}
    for i, task in enumerate(tasks_):
        for j, cell in enumerate(cells):
            a_u, a_s = axes[i, 2 * j], axes[i, 2 * j + 1]
            if (task, cell) not in groups:
                for a in (a_u, a_s):
                    a.set_axis_off()
                why = "not run" + (
                    ": gated cells run recall\nup to --gated-max-D only"
                    if (task, cell) in left_out else ""
                )  # fmt: skip
                a_u.text(0.5, 0.5, f"{cell}: {task}\n{why}", ha="center",
                         va="center", fontsize=8, color="gray",
                         transform=a_u.transAxes)  # fmt: skip
                continue
            for s in meta["summary"]:
                if (s["task"], s["cell"]) != (task, cell):
                    continue
                est = s["estimator"]
                upd, sec, m, se = _band(rows, task, cell, est)
                for a, x in ((a_u, upd), (a_s, sec)):
                    (line,) = a.plot(x, m, "-", marker=".", color=STYLE[est], lw=1)
                    a.fill_between(x, m - se, m + se, color=STYLE[est], alpha=0.2,
                                   lw=0)  # fmt: skip
                handles[est] = line
            for a in (a_u, a_s):
                a.axhline(1.0, color="gray", ls=":", lw=1)
                a.set_ylim(-0.05, 1.3)
                a.grid(True, alpha=0.3)
                a.set_title(f"{cell}: {task}", fontsize=8)
                a.tick_params(labelsize=7)
            a_u.set_ylabel("held-out MSE / trivial MSE", fontsize=8)
            a_u.set_xlabel("updates", fontsize=8)
            a_s.set_xlabel("training wall-clock (s)", fontsize=8)
    (triv,) = axes[0, 0].plot([], [], color="gray", ls=":", lw=1)
    labels = [LABELS[e] for e in handles] + ["trivial predictor ŷ = 0 (score 1)"]
    fig.legend([*handles.values(), triv], labels, loc="lower center",
               ncol=3, fontsize=8)  # fmt: skip
    n = len(meta["seeds"])
    fig.suptitle(
        f"Online learning of long-range memory: {', '.join(meta['tasks'])}\n"
        f"k = {args.k}, H = {args.hidden}, batch B = {args.batch}, "
        f"{args.updates} updates (online: a stream of T = {args.updates * args.k} "
        f"steps);\nscored on {args.eval_batch} held-out sequences; mean ± s.e. "
        f"over {n} seed{'s' if n > 1 else ''}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.04 + 0.08 / len(tasks_), 1, 0.97 - 0.05 / len(tasks_)))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
