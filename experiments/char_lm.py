"""Character-level language model on real text: online TBPTT vs ARTBP.

An LSTM (and a GRU) reads ``B`` contiguous streams of a character corpus and
predicts the next character, trained online: the state is carried along the
streams and the params are updated at every truncation point. TBPTT(k) cuts
every k steps; ARTBP (Tallec & Ollivier 2017) cuts at random with the
poly-tail schedule ``c_d = (α−1)/((α−2)L₀ + d)`` of mean segment length
``L₀ = k`` and reweights the surviving links by ``1/(1 − c)``, so its
gradient is unbiased.

What is matched, and reported: both estimators see the same characters in
the same order and backpropagate every step exactly once (the same number of
backward steps), and make about ``T/k`` updates (ARTBP's count is random with
mean ``T/k``; the table gives both counts). The learning rate follows the
same cosine decay over the expected number of updates. Each configuration
runs over several seeds (initialisation and ARTBP's cuts); the table gives
mean ± standard error over seeds of the validation bpc (bpc = mean
cross-entropy / ln 2) and, once at the end, of the test bpc. Training
wall-clock excludes compilation and evaluation.

Default corpus: the Python standard library's own ``*.py`` files (no
download; see :func:`jbptt.data.load_corpus`), held out at the file level
(``--split files``: whole files in a fixed random order make up 5% validation
and 5% test, so both sample the whole library); ``--corpus PATH`` takes any
UTF-8 text file or a directory with the Penn Treebank character files.
Validation and test bpc are measured on the whole held-out split read as
``--eval-batch`` contiguous windows, each from a zero state
(``--valid-chars N``: N characters in windows spread evenly over the split,
cheaper and noisier).

The paper (Tallec & Ollivier 2017, PTB characters, LSTM): "ARTBP slightly
outperforms truncated BPTT". Ours: see ``experiments/RESULTS.md``.

``--devices N`` splits each run's streams over N devices (data parallel,
the same numbers). In a ``jax.distributed`` job (``--coordinator``,
``--num-processes``, ``--process-id`` or ``--distributed``, as
``experiments.bias_sweep``) the same command runs on every process: each
trains every run on its share of the streams, over every device of the job
by default, and process 0 alone writes the CSV, JSON and figure. Every
process must read the same corpus (checked: they stop with an error naming
the processes that differ).

Runs resume. Each run (cell, estimator, seed) is checkpointed every
``--checkpoint-every`` time steps (default 25000; 0: none) at a segment's
end, and once done with its test bpc, in ``OUT/NAME.ckpt/`` by process 0
alone (:class:`Checkpoints`). Rerunning a stopped or killed command resumes
every run from process 0's latest checkpoint, on every process (the others
need no shared disk), with the numbers of an uninterrupted run, bit for
bit; finished runs are read back, not trained again. A checkpoint of
another configuration (flags, corpus) is refused with an error naming what
changed: start over with another ``--out`` or ``--name``. ``--devices``,
``--jobs``, ``--seeds`` and ``--cells`` are not part of a run's
configuration (a run resumed on other devices sums its data-parallel
gradient in another order: the same up to rounding).

Run ``python -m experiments.char_lm --help``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import optax

import jbptt
from experiments import _cli
from jbptt import cells, data, estimators, truncation

CELLS = {"lstm": cells.lstm, "gru": cells.gru}
CHUNK = 2048  # time steps per train.train call: bounds the one-hot inputs' memory


def one_hot(ids, V):
    return np.eye(V, dtype=np.dtype(jax.numpy.result_type(float)))[ids]


def unigram_bpc(train, valid, V) -> float:
    """Bits per character of the best context-free model (train frequencies,
    add-one smoothed) on ``valid``: the bar a recurrent model must clear."""
    p = (np.bincount(train, minlength=V) + 1.0) / (len(train) + V)
    return float(-np.mean(np.log2(p[valid])))


_EVALS: dict = {}


def held_out(ids, n_chars: int | None, batch: int) -> np.ndarray:
    """``batch`` windows of ``n_chars // batch`` characters spread evenly over
    ``ids`` (the first at its start, the last at its end), time-major
    ``[L, batch]``: an evaluation set that samples the whole split
    (``n_chars=None``: all of it but the fewer than ``batch`` characters
    left between windows of ``len(ids) // batch``)."""
    L = (len(ids) if n_chars is None else min(n_chars, len(ids))) // batch
    if L < 2:
        raise ValueError(
            f"{len(ids)} held-out characters are too few for {batch} "
            "evaluation streams (--eval-batch) of at least 2 characters."
        )
    starts = np.linspace(0, len(ids) - L, batch).astype(int)
    return np.stack([ids[a : a + L] for a in starts], axis=1)


def make_eval(model, V, s, embed):
    """Jitted bpc on the streams ``s`` ``[L, B]`` (from a zero state)."""
    batch = s.shape[1]
    cache_key = (model.cell, V, s.shape, embed, s.tobytes())
    if cache_key in _EVALS:
        return _EVALS[cache_key]
    x, y = s[:-1], s[1:]  # next-character pairs
    xs, ys = jax.numpy.asarray(inputs(x, V, embed)), jax.numpy.asarray(y)
    forward = jax.jit(jbptt.loss(model.cell, model.loss_fn))

    def bpc(params):
        # On the host: params replicated over a mesh (of several processes,
        # too) are read whole, and every process evaluates the same program
        # on its own default device.
        params = jax.tree_util.tree_map(np.asarray, params)
        h0 = model.cell.initial_state(params, (batch,))
        L, _ = forward(params, h0, xs, ys)
        return float(L) / len(ys) / math.log(2)  # per-step loss: batch mean

    _EVALS[cache_key] = bpc
    return bpc


def make_model(cell_name: str, V: int, embed: int, forget_bias: float = 0.0):
    """Embedding (``embed`` > 0) or one-hot inputs → cell → linear softmax;
    ``forget_bias`` is added to an LSTM's initial forget-gate bias (other
    cells have none)."""
    cell = cells.lstm(forget_bias) if cell_name == "lstm" else CELLS[cell_name]()
    if embed:
        return jbptt.readout(cell, V, "xent", vocab_size=V)
    return jbptt.readout(cell, output_size=V, loss="xent")


def inputs(ids, V: int, embed: int):
    """The scan's inputs for integer ``ids``: the ids themselves for a token
    model (as ``model.encode`` holds them: floats ``[T, B, 1]``), one-hot
    vectors otherwise."""
    if embed:
        return ids[..., None].astype(jax.numpy.result_type(float))
    return one_hot(ids, V)


class Config(NamedTuple):
    cell: str
    k: int


def configs(args) -> list[Config]:
    """The (cell, k) pairs run: every cell of ``--cells`` at ``--k``."""
    return [Config(c, args.k) for c in args.cells]


def estimators_for(k, alpha):
    return {
        "tbptt": estimators.tbptt(k),
        "artbp": estimators.artbp(truncation.poly_tail(float(k), alpha)),
    }


def label(cfg: Config, est_name: str, alpha: float) -> str:
    if est_name == "tbptt":
        return f"{cfg.cell.upper()} TBPTT(k={cfg.k})"
    return f"{cfg.cell.upper()} ARTBP(L0={cfg.k}, a={alpha:g})"


def setup(cfg: Config, V: int, T: int, args):
    """Model, per-step loss and optimizer of one configuration (shared by its
    runs, so they share the compiled update)."""
    model = make_model(cfg.cell, V, args.embed, args.forget_bias)

    def loss_fn(p, out, yt):
        # mean per-step loss over a segment of nominal length k: the same
        # scale for both estimators, so one learning rate and clip fit both
        return model.loss_fn(p, out, yt) / cfg.k

    # cosine decay to lr/10 over the expected number of updates (T/k)
    lr = optax.cosine_decay_schedule(args.lr, max(1, T // cfg.k), alpha=0.1)
    opt = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(lr))
    return model, loss_fn, opt


QUICK_SIZE = 64  # --quick pads segments to ≥ 64 steps: few compilations


class Progress:
    """Where one run stands: its validation curve so far, the updates made,
    the training wall-clock (no compilation, no callbacks) and, once it is
    done, its test bpc."""

    def __init__(self, curve, updates=0, seconds=0.0, test_bpc=None):
        self.curve, self.updates, self.seconds = curve, updates, seconds
        self.test_bpc = test_bpc


def training_stream(train_ids, batch: int, steps: int):
    """Inputs and targets ``[steps, B]`` of ``batch`` contiguous streams; past
    the end of a stream it starts over (one more epoch, the state carried)."""
    stream = data.streams(train_ids, batch)
    x, y = stream[:-1], stream[1:]  # next-character pairs
    idx = np.arange(steps) % len(y)
    return x[idx], y[idx], steps / len(y)


def run_one(setup_, est, corpus, args, key, bar=None, ckpts=None):
    """One training run: its :class:`Progress` and its final
    :class:`jbptt.train.TrainState`. With ``ckpts`` (:class:`Checkpoints`)
    it goes on from process 0's latest checkpoint of the run, if any, and
    saves one every ``--checkpoint-every`` steps."""
    model, loss_fn, opt = setup_
    V = len(corpus.vocab)
    k_init, k_w = jax.random.split(key)
    params = model.init(k_init, args.embed or V, args.hidden)
    x, y, _ = training_stream(corpus.train, args.batch, args.steps)
    T = len(y)
    valid = held_out(corpus.valid, args.valid_chars, args.eval_batch)
    bpc = make_eval(model, V, valid, args.embed)
    state = None
    if ckpts is not None:
        template = fresh_state(model, opt, params, k_w, args.batch)
        state, run = ckpts.restore(template)
        if state is not None:
            at = "done" if state.step == T else "resuming"
            _log(bar, f"{ckpts.run}: {at} at step {state.step} of {T}, from "
                 f"{ckpts.folder}")  # fmt: skip
            if bar is not None:
                bar.update(state.step)
    if state is None:
        run = Progress([{"t": 0, "point": 0, "seconds": 0.0, "updates": 0,
                         "bpc": bpc(params)}])  # fmt: skip
    clock = [run.seconds]  # wall-clock of the calls before this one

    def record(e):
        t = e.start + e.length
        run.updates, run.seconds = e.index + 1, clock[0] + e.seconds
        if bar is not None:
            bar.update(e.length)
        if t // args.eval_every > e.start // args.eval_every or t == T:
            # evaluation point: the last multiple of --eval-every crossed (the
            # end of the stream: one past them), the same for every seed
            point = -(-t // args.eval_every) if t == T else t // args.eval_every
            row = {"t": t, "point": point, "seconds": run.seconds}
            run.curve.append(row | {"updates": run.updates, "bpc": bpc(e.state.params)})
        if ckpts is not None and t < T and ckpts.due(e.start, t):
            ckpts.save(e.state, run)  # the end of the run: run_job saves it

    t0 = 0 if state is None else state.step
    # chunked calls on the grid of CHUNK steps: bitwise one long call, and a
    # run resumed at a segment's end is bitwise the uninterrupted one
    starts = [t0, *range((t0 // CHUNK + 1) * CHUNK, T, CHUNK)] if t0 < T else []
    for a in starts:
        b = min((a // CHUNK + 1) * CHUNK, T)
        hist = jbptt.train.train(
            model.cell,
            loss_fn,
            params,
            inputs(x[a:b], V, args.embed),
            y[a:b],
            opt,
            est,
            key=k_w,
            state=state,
            flush=b == T,
            callbacks=[record],
            buckets=jbptt.train.Buckets(min_bucket=QUICK_SIZE if args.quick else None),
            mesh=args.devices,
        )
        state = hist.state
        clock[0] = run.seconds
    return run, state


def test_bpc(model, V, corpus, params, args) -> float:
    """Test bpc, once, after training (the test split, or ``--valid-chars``
    of its characters, in ``--eval-batch`` windows)."""
    test = held_out(corpus.test, args.valid_chars, args.eval_batch)
    return make_eval(model, V, test, args.embed)(params)


# --quick sets these defaults only: flags given explicitly are kept.
QUICK = dict(
    max_chars=60_000,
    cells=["lstm"],
    k=8,
    hidden=32,
    batch=8,
    steps=600,
    seeds=2,
    valid_chars=2000,
    eval_every=200,
    eval_batch=10,
    lr=1e-2,
)


def parse_args(argv=None) -> argparse.Namespace:
    ap = _cli.parser(
        "python -m experiments.char_lm",
        "Character-level LM trained online with TBPTT(k) vs ARTBP at matched "
        "updates and backward steps, over several seeds; validation bits per "
        "character against updates and wall-clock, test bpc at the end. "
        "Writes NAME.{csv,json,png}; checkpoints in NAME.ckpt/ let the same "
        "command resume a stopped run.",
    )
    ap.add_argument(
        "--corpus",
        default=None,
        help="UTF-8 text file or PTB char directory (None: the "
        "Python standard library's *.py sources)",
    )
    ap.add_argument(
        "--max-chars",
        type=_cli.positive_int,
        default=5_000_000,
        help="cap on the corpus size in characters (90%% train, 5%% valid, 5%% test)",
    )
    ap.add_argument(
        "--split",
        choices=["files", "contiguous"],
        default="files",
        help="held-out split of the default corpus: whole files in a fixed "
        "random order, or the last characters in file-name order",
    )
    ap.add_argument(
        "--cells",
        nargs="+",
        default=["lstm"],
        choices=list(CELLS),
        help="cells to train",
    )
    ap.add_argument(
        "--k",
        type=_cli.positive_int,
        default=32,
        help="TBPTT truncation and ARTBP mean segment length",
    )
    ap.add_argument(
        "--alpha",
        type=_cli.positive_float,
        default=4.0,
        help="ARTBP poly-tail α (> 1)",
    )
    ap.add_argument("--hidden", type=_cli.positive_int, default=256, help="hidden size")
    ap.add_argument(
        "--forget-bias",
        type=_cli.finite_float,
        default=0.0,
        help="added to the LSTM forget gate's initial bias",
    )
    ap.add_argument(
        "--embed",
        type=_cli.nonneg_int,
        default=64,
        help="character embedding size (0: one-hot inputs)",
    )
    ap.add_argument(
        "--batch", type=_cli.positive_int, default=32, help="parallel streams"
    )
    ap.add_argument(
        "--steps",
        type=_cli.positive_int,
        default=600_000,
        help="time steps per stream (a stream starts over at its end: epochs)",
    )
    ap.add_argument(
        "--lr",
        type=_cli.positive_float,
        default=3e-3,
        help="Adam learning rate (cosine decay to a tenth over the run)",
    )
    ap.add_argument(
        "--clip",
        type=_cli.positive_float,
        default=1.0,
        help="global-norm clip (> 0)",
    )
    ap.add_argument(
        "--valid-chars",
        type=_cli.positive_int,
        default=None,
        help="validation (and test) characters, in --eval-batch windows "
        "spread over the split (None: the whole split)",
    )
    ap.add_argument(
        "--eval-batch",
        type=_cli.positive_int,
        default=50,
        help="validation (and test) windows",
    )
    ap.add_argument(
        "--eval-every",
        type=_cli.positive_int,
        default=25_000,
        help="time steps between validations",
    )
    ap.add_argument("--seed", type=_cli.nonneg_int, default=0, help="first PRNG seed")
    ap.add_argument(
        "--jobs",
        type=_cli.positive_int,
        default=1,
        help="runs trained at once, in worker processes (the results do not "
        "depend on it; each run's wall-clock does, as they share the machine)",
    )
    ap.add_argument(
        "--seeds",
        type=_cli.positive_int,
        default=3,
        help="seeds per run (seed, seed+1, ...)",
    )
    ap.add_argument(
        "--devices",
        type=_cli.positive_int,
        default=None,
        help="split each run's --batch streams over this many devices, data "
        "parallel (None: one; every device of every process with "
        "--coordinator/--distributed; on CPU set XLA_FLAGS=--xla_force_host_"
        "platform_device_count=N first)",
    )
    ap.add_argument(
        "--checkpoint-every",
        type=_cli.nonneg_int,
        default=argparse.SUPPRESS,
        help=f"time steps between checkpoints of a run (default {CHECKPOINT_EVERY}; "
        "0: none), kept with its last one in OUT/NAME.ckpt/ by process 0: "
        "rerunning the same command resumes every run from its latest "
        "checkpoint, with the numbers of an uninterrupted run",
    )
    _cli.add_quick(ap, QUICK)
    ap.add_argument("--out", default="results", help="output folder")
    ap.add_argument(
        "--name",
        type=_cli.run_name,
        default="char_lm",
        help="output file stem inside --out: NAME.{csv,json,png}",
    )
    ap.add_argument(
        "--replot",
        action="store_true",
        help="only redraw OUT/NAME.png from OUT/NAME.{csv,json}",
    )
    _cli.add_distributed(ap)
    args = _cli.parse(ap, argv, QUICK)
    if args.alpha <= 1:
        ap.error(f"--alpha must be > 1 (finite mean segment length), got {args.alpha}")
    if checkpoint_every(args) and not args.replot:
        import importlib.util

        if importlib.util.find_spec("orbax") is None:
            ap.error(
                "--checkpoint-every: checkpoints are saved with orbax-checkpoint, "
                'not installed: pip install "jbptt[runs]", or run without '
                "checkpoints (--checkpoint-every 0)"
            )
    # Several processes: joined before any JAX call; each runs every job,
    # its share of the streams on its devices, and process 0 writes.
    processes = _cli.start_distributed(ap, args)[1]
    if processes > 1 and args.devices is None:
        args.devices = jax.device_count()
    if processes > 1 and args.jobs > 1:
        ap.error(
            f"--jobs must be 1 in a jax.distributed job ({processes} processes "
            f"share every run), got {args.jobs}"
        )
    if args.devices is not None:
        if args.batch % args.devices:
            ap.error(
                f"--batch {args.batch} must divide evenly over --devices "
                f"{args.devices} (each device trains batch / devices streams)"
            )
        if args.devices > jax.device_count():
            ap.error(
                f"--devices must be between 1 and the {jax.device_count()} "
                f"available device(s), got {args.devices}"
            )
    return args


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for one value)."""
    v = np.asarray(values, float)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se


def pm(mean: float, se: float) -> str:
    return f"{mean:.3f} ± {se:.3f}"


def summarize(name, cfg, est_name, runs) -> dict:
    """One table row: a configuration and estimator over its seeds."""
    final = mean_se([r["curve"][-1]["bpc"] for r in runs])
    test = mean_se([r["test_bpc"] for r in runs])
    updates = [r["updates"] for r in runs]
    return {
        "run": name,
        "cell": cfg.cell,
        "k": cfg.k,
        "estimator": est_name,
        "seeds": len(runs),
        "updates": float(np.mean(updates)),
        "updates_per_seed": updates,
        "backward_steps": runs[0]["backward_steps"],
        "mean_segment_length": float(
            np.mean([r["steps"] / r["updates"] for r in runs])
        ),
        "initial_valid_bpc": float(np.mean([r["curve"][0]["bpc"] for r in runs])),
        "final_valid_bpc": final[0],
        "final_valid_bpc_se": final[1],
        "best_valid_bpc": float(
            np.mean([min(c["bpc"] for c in r["curve"]) for r in runs])
        ),
        "test_bpc": test[0],
        "test_bpc_se": test[1],
        "train_seconds": float(np.mean([r["seconds"] for r in runs])),
    }


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.replot:
        print(f"wrote:\n  {replot(out, args.name)}")
        return None
    corpus = data.load_corpus(args.corpus, max_chars=args.max_chars, split=args.split)
    check_same_corpus(corpus)
    writes = jax.process_index() == 0  # the only process that writes
    if writes:
        out.mkdir(parents=True, exist_ok=True)
    V = len(corpus.vocab)
    _, y, epochs = training_stream(corpus.train, args.batch, args.steps)
    print(
        f"corpus: {corpus.source}, {corpus.n_chars} chars "
        f"(train {len(corpus.train)}, valid {len(corpus.valid)}, test "
        f"{len(corpus.test)}), vocab {V}; {args.steps} steps × {args.batch} "
        f"streams = {epochs:.2f} epochs"
    )
    seeds = list(range(args.seed, args.seed + args.seeds))
    cfgs = configs(args)
    jobs = [
        (cfg, est_name, seed)
        for cfg in cfgs
        for est_name in ("tbptt", "artbp")
        for seed in seeds
    ]
    rows, summary = [], []
    t0 = time.perf_counter()
    bar = None if args.quick or not writes else _progress(len(jobs) * args.steps)
    results = iter(_run_all(jobs, corpus, args, bar))
    for cfg in cfgs:
        for est_name in ("tbptt", "artbp"):
            name = label(cfg, est_name, args.alpha)
            runs = []
            for seed in seeds:
                curve, updates, seconds, tb = next(results)
                runs.append(
                    {
                        "curve": curve,
                        "updates": updates,
                        "steps": args.steps,
                        "seconds": seconds,
                        "test_bpc": tb,
                        "backward_steps": args.steps * args.batch,
                    }
                )
                for c in curve:
                    rows.append(
                        {
                            "run": name,
                            "cell": cfg.cell,
                            "k": cfg.k,
                            "estimator": est_name,
                            "seed": seed,
                            "t": c["t"],
                            "point": c["point"],
                            "backward_steps": c["t"] * args.batch,
                            "updates": c["updates"],
                            "seconds": c["seconds"],
                            "valid_bpc": c["bpc"],
                        }
                    )
            summary.append(summarize(name, cfg, est_name, runs))
    if bar is not None:
        bar.close()
    uni, uni_test = (
        unigram_bpc(
            corpus.train, held_out(ids, args.valid_chars, args.eval_batch).ravel(), V
        )
        for ids in (corpus.valid, corpus.test)
    )
    print(f"unigram baseline: {uni:.3f} bpc (valid), {uni_test:.3f} (test)")
    meta = {
        "unigram_valid_bpc": uni,
        "unigram_test_bpc": uni_test,
        "epochs": epochs,
        "seeds": seeds,
        "corpus": {
            "source": corpus.source,
            "n_chars": corpus.n_chars,
            "train": len(corpus.train),
            "valid": len(corpus.valid),
            "test": len(corpus.test),
            "vocab": V,
        },
        "summary": summary,
        "seconds": time.perf_counter() - t0,
    }
    if not writes:  # process 0 writes the files
        return meta
    run = _cli.Run()
    stem = out / args.name
    run.step("CSV", write_csv, f"{stem}.csv", rows)
    run.wrote(f"{stem}.csv")
    drawn = {**meta, "config": vars(args)}  # as the JSON holds it (replot)
    if run.step("plot", plot, f"{stem}.png", rows, summary, drawn) is None:
        run.wrote(f"{stem}.png")
    return run.finish(
        f"{stem}.json",
        meta,
        config=dict(vars(args)),
        seed=args.seed,
        rows=[
            {
                "run": s["run"],
                "seeds": s["seeds"],
                "updates": s["updates"],
                "final valid bpc": pm(s["final_valid_bpc"], s["final_valid_bpc_se"]),
                "test bpc": pm(s["test_bpc"], s["test_bpc_se"]),
                "seconds": s["train_seconds"],
            }
            for s in summary
        ]
        + [
            {
                "run": "unigram baseline",
                "final valid bpc": f"{uni:.3f}",
                "test bpc": f"{uni_test:.3f}",
            }
        ],
    )


def corpus_digest(corpus) -> bytes:
    """SHA-256 of the corpus as trained on: its vocabulary and the ids of
    its train, validation and test splits."""
    h = hashlib.sha256("\0".join(corpus.vocab).encode())
    for part in (corpus.train, corpus.valid, corpus.test):
        h.update(np.ascontiguousarray(part, np.int32).tobytes())
    return h.digest()


def check_same_corpus(corpus) -> None:
    """In a ``jax.distributed`` job, stops every process (exit 1) unless all
    read the same characters as process 0: else they would train on
    different data and stall in their collectives."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(corpus_digest(corpus), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest))
    other = [i for i, d in enumerate(digests) if not np.array_equal(d, digests[0])]
    if other:
        raise SystemExit(
            f"error: process(es) {other} read other characters than process 0 "
            f"({corpus.source}, {corpus.n_chars} chars): every process needs the "
            "same --corpus file, --max-chars and --split (the default corpus is "
            "the standard library of the Python running it)"
        )


# ------------------------------------------------------------ checkpoints ---

CHECKPOINT_EVERY = 25_000  # the default of --checkpoint-every
# What a checkpoint keeps of the trainer's state at a segment's end (its
# pending steps, per-stream cuts and reset target are None there, here).
_KEPT = ("params", "opt_state", "h", "est_state", "key", "step", "segment", "cut")
_CURVE = ("t", "point", "seconds", "updates", "bpc")  # a curve row, in order
# Flags that do not change a run's numbers (where it runs, what it writes,
# which other runs there are), left out of the configuration it must match.
_NOT_RUN = ("out", "name", "replot", "jobs", "devices", "quick", "cells", "seeds")
_NOT_RUN += ("checkpoint_every",)


def checkpoint_every(args) -> int:
    """``--checkpoint-every`` (absent from ``args`` unless given, so that the
    configuration of runs from before the flag stays as it was)."""
    return getattr(args, "checkpoint_every", CHECKPOINT_EVERY)


def fresh_state(model, opt, params, key, batch: int):
    """A run's starting :class:`jbptt.train.TrainState` with its cell state
    filled in: what a checkpoint of the run is restored into (its
    structure, shapes and dtypes)."""
    dtype = jax.numpy.result_type(float)  # the inputs' dtype: the compute one
    h = model.cell.initial_state(params, (batch,))
    h = jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a, dtype), h)
    return jbptt.train.TrainState(
        params, opt.init(params), h, est_state=(), key=key, step=0, segment=0, cut=0
    )


def _whole(tree):
    """``tree`` with every array split over processes gathered whole on each
    process (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def one(a):
        if isinstance(a, jax.Array) and not (
            a.is_fully_addressable or a.is_fully_replicated
        ):
            return multihost_utils.process_allgather(a, tiled=True)
        return a

    return jax.tree_util.tree_map(one, tree)


class Checkpoints:
    """The checkpoints of one run (cell, k, estimator, seed), in
    ``OUT/NAME.ckpt/<cell>-k<k>-<estimator>-seed<seed>/`` on process 0's
    disk (:class:`jbptt.runs.Checkpointer`, which stores the run's
    configuration beside them and refuses another's). Each holds the
    trainer's state at a segment's end, the validation curve so far and the
    wall-clock, and the last one the test bpc. Process 0 alone writes; every
    process restores what process 0 saved (no shared disk needed)."""

    def __init__(self, args, corpus, cfg: Config, est_name: str, seed: int):
        run = f"{cfg.cell}-k{cfg.k}-{est_name}-seed{seed}"
        self.folder = Path(args.out) / f"{args.name}.ckpt" / run
        self.run = f"{label(cfg, est_name, args.alpha)} seed {seed}"
        self.every = checkpoint_every(args)
        self.rows = args.steps // args.eval_every + 2  # curve rows, at most
        self.config = {k: v for k, v in vars(args).items() if k not in _NOT_RUN}
        self.config.update(cell=cfg.cell, k=cfg.k, estimator=est_name, seed=seed)
        self.config["corpus_sha256"] = corpus_digest(corpus).hex()
        self._saver = None

    def due(self, start: int, t: int) -> bool:
        """Whether a segment from ``start`` to ``t`` crossed a multiple of
        ``--checkpoint-every``."""
        return t // self.every > start // self.every

    def _tree(self, kept, run: Progress) -> dict:
        # fixed shapes: the curve in a table of its longest length, as the
        # 32-bit words of its float64 values (kept bit for bit without x64)
        curve = np.full((self.rows, len(_CURVE)), np.nan)
        for i, row in enumerate(run.curve):
            curve[i] = [row[f] for f in _CURVE]
        test = math.nan if run.test_bpc is None else run.test_bpc
        return {"train": kept, "curve": curve.view(np.uint32),
                "points": len(run.curve), "seconds": float(run.seconds),
                "test_bpc": float(test)}  # fmt: skip

    def restore(self, template):
        """``(state, progress)`` of process 0's latest checkpoint of the run,
        or ``(None, None)`` where it has none; every process calls it."""
        if not self._on_process_0(self.folder.is_dir()):
            return None, None  # nothing saved: no folder made
        tree = self._tree({f: getattr(template, f) for f in _KEPT}, Progress([]))
        try:
            got = jbptt.runs.Checkpointer.restore_from_process_0(
                self.folder, tree, config=self.config
            )
        except FileNotFoundError:
            return None, None
        except ValueError as err:
            raise SystemExit(
                f"error: {self.run} cannot resume: {err}\nA run resumes only "
                "with the flags (and corpus) it started with: give those, or "
                f"start over with another --out or --name (or delete {self.folder})."
            ) from err
        state = jbptt.train.TrainState(**got["train"])
        rows = np.asarray(got["curve"], np.uint32).view(np.float64)[: got["points"]]
        curve = [
            {
                f: (float if f in ("seconds", "bpc") else int)(v)
                for f, v in zip(_CURVE, row, strict=True)
            }
            for row in rows
        ]
        test = None if math.isnan(got["test_bpc"]) else got["test_bpc"]
        return state, Progress(curve, state.segment, got["seconds"], test)

    @staticmethod
    def _on_process_0(flag: bool) -> bool:
        """``flag`` as process 0 has it (a collective: every process calls it)."""
        if jax.process_count() == 1:
            return flag
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.array(flag)))

    def save(self, state, run: Progress) -> None:
        """Checkpoint ``state`` (a segment's end) and ``run`` as step
        ``state.step``: every process gathers the state, process 0 writes."""
        extra = [
            f
            for f in ("pending", "stream_cut", "h_reset")
            if getattr(state, f) is not None
        ]
        if extra:  # not kept: a resumed run would silently differ
            raise RuntimeError(f"char LM checkpoint: state.{extra[0]} is not None")
        tree = self._tree(_whole({f: getattr(state, f) for f in _KEPT}), run)
        if jax.process_index() != 0:  # process 0 writes
            return
        if self._saver is None:
            self._saver = jbptt.runs.Checkpointer(self.folder, config=self.config)
        self._saver.save(state.step, tree)

    def close(self) -> None:
        if self._saver is not None:
            self._saver.close()
            self._saver = None


# ------------------------------------------------- runs, here or in workers ---


def run_job(cfg: Config, est_name: str, seed: int, corpus, args, setups, bar=None):
    """One (configuration, estimator, seed) run: its validation curve, its
    number of updates, its training wall-clock and its test bpc. Runs of one
    configuration share its setup in ``setups`` (one dict per ``main`` call,
    as the setup depends on ``args``), hence its compiled update. With
    ``--checkpoint-every`` it resumes from, and saves, the run's checkpoints
    (:class:`Checkpoints`), the last one with the test bpc once it is done."""
    V = len(corpus.vocab)
    if cfg not in setups:
        setups[cfg] = setup(cfg, V, args.steps, args)
    setup_ = setups[cfg]
    est = estimators_for(cfg.k, args.alpha)[est_name]
    ckpts = None
    if checkpoint_every(args):
        ckpts = Checkpoints(args, corpus, cfg, est_name, seed)
    try:
        run, state = run_one(
            setup_, est, corpus, args, jax.random.key(seed), bar, ckpts
        )
        if run.test_bpc is None:
            run.test_bpc = test_bpc(setup_[0], V, corpus, state.params, args)
            if ckpts is not None:
                ckpts.save(state, run)  # the run's end: nothing left to train
    finally:
        if ckpts is not None:
            ckpts.close()
    curve = run.curve
    _log(
        bar,
        f"{label(cfg, est_name, args.alpha):26s} seed {seed}: valid bpc "
        f"{curve[0]['bpc']:.3f} -> {curve[-1]['bpc']:.3f}, test "
        f"{run.test_bpc:.3f} ({run.updates} updates, {run.seconds:.1f} s)",
    )
    return curve, run.updates, run.seconds, run.test_bpc


def _run_all(jobs, corpus, args, bar):
    """The results of ``run_job`` for every job, in order: here one after
    the other (``--jobs 1``), or in ``--jobs`` worker processes (each run is
    the same program on the same data: the same result, bitwise, wherever
    it runs; only its wall-clock shares the machine)."""
    if args.jobs == 1:
        setups: dict = {}
        return [run_job(*job, corpus, args, setups, bar) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # a fresh JAX per worker (no fork of threads)
    with (
        ctx.Manager() as manager,
        ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool,
    ):
        ticks = manager.Queue()
        x64 = bool(jax.config.jax_enable_x64)
        futures = [
            pool.submit(_worker, job, args, x64, ticks if bar else None) for job in jobs
        ]
        while not all(f.done() for f in futures):
            _drain(ticks, bar, timeout=1.0)
        _drain(ticks, bar, timeout=0.0)
        return [f.result() for f in futures]


# A worker process serves one main() call (the pool is made per call), so
# what it loads once can live at module level there.
_CORPUS: dict = {}
_WORKER_SETUPS: dict = {}


def _worker(job, args, x64: bool, ticks):
    """``run_job`` in a worker process: the parent's float width, the corpus
    loaded once per worker, progress sent back through ``ticks``."""
    jax.config.update("jax_enable_x64", x64)
    key = (args.corpus, args.max_chars, args.split)
    if key not in _CORPUS:
        _CORPUS[key] = data.load_corpus(
            args.corpus, max_chars=args.max_chars, split=args.split
        )
    bar = None if ticks is None else _Ticks(ticks)
    out = run_job(*job, _CORPUS[key], args, _WORKER_SETUPS, bar)
    if bar is not None:
        bar.flush()
    return out


class _Ticks:
    """A progress bar's ``update``/``write`` sent to the parent's bar, at most
    about once a second."""

    def __init__(self, queue):
        self.queue, self.steps, self.last = queue, 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.steps += n
        if time.perf_counter() - self.last > 1.0:
            self.flush()

    def flush(self) -> None:
        if self.steps:
            self.queue.put(self.steps)
        self.steps, self.last = 0, time.perf_counter()

    def write(self, line: str) -> None:
        self.flush()
        self.queue.put(line)


def _drain(queue, bar, timeout: float) -> None:
    """Hands the workers' progress and log lines to ``bar``."""
    import queue as queue_

    if bar is None:
        time.sleep(timeout)
        return
    try:
        item = queue.get(timeout=timeout) if timeout else queue.get_nowait()
        while True:
            bar.write(item) if isinstance(item, str) else bar.update(item)
            item = queue.get_nowait()
    except queue_.Empty:
        pass


def _progress(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is optional
        return None
    return tqdm(total=total, unit="step", desc="char LM", mininterval=2.0)


def _log(bar, line: str) -> None:
    (bar.write if bar is not None else print)(line)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


def _band(rows, run):
    """Mean validation bpc over seeds at each evaluation point, its standard
    error, and the mean update count and wall-clock there (x axes)."""
    r = [x for x in rows if x["run"] == run]
    points = sorted({x["point"] for x in r})
    by = [[x for x in r if x["point"] == p] for p in points]
    mean = np.array([np.mean([x["valid_bpc"] for x in g]) for g in by])
    se = np.array([mean_se([x["valid_bpc"] for x in g])[1] for g in by])
    upd = np.array([np.mean([x["updates"] for x in g]) for g in by])
    sec = np.array([np.mean([x["seconds"] for x in g]) for g in by])
    return upd, sec, mean, se


def plot(path, rows, summary, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((s["cell"], s["k"]) for s in summary))
    fig, axes = plt.subplots(
        len(groups), 2, figsize=(11, 3.4 * len(groups) + 0.8), squeeze=False
    )
    uni = meta["unigram_valid_bpc"]
    for (cell, k), (a1, a2) in zip(groups, axes, strict=True):
        lows, tops = [], []
        for s in (s for s in summary if (s["cell"], s["k"]) == (cell, k)):
            upd, sec, mean, se = _band(rows, s["run"])
            ls = "-" if s["estimator"] == "tbptt" else "--"
            lab = f"{s['run']}: {s['updates']:.0f} updates, test {_pm(s, 'test_bpc')}"
            for a, x in ((a1, upd), (a2, sec)):
                (line,) = a.plot(x, mean, ls, marker=".", label=lab)
                a.fill_between(
                    x, mean - se, mean + se, alpha=0.25, color=line.get_color(), lw=0
                )
            lows.append(np.min(mean - se))
            tops.append(mean[min(1, len(mean) - 1)])  # the first evaluation
        # the range where the runs differ: from the best point to the first
        # evaluation after the start (the untrained ≈ log2 V is off the top)
        top = max(tops) + 0.1
        for a in (a1, a2):
            if uni <= top:
                a.axhline(uni, color="gray", ls=":", lw=1, label="unigram baseline")
            a.set_ylim(min(lows) - 0.05, top)
            a.grid(True, alpha=0.3)
        a1.set_ylabel(f"{cell.upper()}, k = {k}\nvalid bits per char")
        a1.legend(fontsize=7, loc="upper right", title_fontsize=7,
                  title=None if uni <= top else f"unigram baseline {uni:.2f} "
                  "(above the plot)")  # fmt: skip
    axes[-1, 0].set_xlabel("parameter updates (mean over seeds)")
    axes[-1, 1].set_xlabel("training wall-clock (s, mean over seeds)")
    c, n = meta["corpus"], len(meta["seeds"])
    spread = f"mean ± s.e. over {n} seeds" if n > 1 else "one seed"
    cfg = meta.get("config") or {}
    model = (
        f"\nhidden {cfg['hidden']}, batch {cfg['batch']} streams, Adam lr "
        f"{cfg['lr']:g}, seeds from {cfg['seed']}; solid: TBPTT(k), dashed: ARTBP "
        "(mean segment k); shading: ± s.e."
        if {"hidden", "batch", "lr", "seed"} <= set(cfg)
        else ""
    )
    fig.suptitle(
        f"Char LM, online TBPTT vs ARTBP — {c['source']}, {c['n_chars']:,} chars, "
        f"{meta['epochs']:.1f} epochs; {spread}{model}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pm(s, key) -> str:
    """``mean ± s.e.`` over seeds, or the one seed's value."""
    return pm(s[key], s[key + "_se"]) if s["seeds"] > 1 else f"{s[key]:.3f}"


def replot(out: Path, name: str) -> Path:
    """Redraw ``NAME.png`` from ``NAME.csv`` and ``NAME.json`` (no training)."""
    import json

    meta = json.loads((out / f"{name}.json").read_text())
    with open(out / f"{name}.csv") as f:
        rows = [
            {
                k: v if k in ("run", "cell", "estimator") else float(v)
                for k, v in r.items()
            }
            for r in csv.DictReader(f)
        ]
    plot(out / f"{name}.png", rows, meta["summary"], meta)
    return out / f"{name}.png"


if __name__ == "__main__":
    main()
