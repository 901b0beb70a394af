"""Budget checkpointing: optimal schedule, slots held, executed steps, gradients."""

from __future__ import annotations

import heapq

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import Budget
from jbptt._src.checkpointing import concat_outs, scan_budget
from jbptt._src.losses import sum_of_losses
from jbptt._src.revolve import (
    ADVANCE,
    check_budget,
    forward_steps,
    recomputations,
    schedule,
    simulate,
)
from tests.helpers import rel_err


def brute_force(T: int, M: int) -> int:
    """Fewest forward steps over *every* store/recompute strategy (Dijkstra).

    Slots hold ("s", i) a state or ("r", i) step i's residuals (which include
    h_i). Running step i from h_i costs 1 and gives h_{i+1} and, optionally,
    r_i in place of h_i's slot. Step i is reversed once steps > i are, and
    needs r_i. h_0 is never dropped (the caller owns it).
    """
    start = (frozenset({("s", 0)}), T)
    dist = {start: 0}
    queue = [(0, 0, start)]
    tie = 0
    while queue:
        d, _, (held, r) = heapq.heappop(queue)
        if r == 0:
            return d
        if d > dist[(held, r)]:
            continue
        moves = []
        if ("r", r - 1) in held:  # reverse step r − 1 (free); drop what is past it
            rest = frozenset(x for x in held if x[1] < r - 1)
            if not any(x[1] == 0 for x in rest):
                rest |= {("s", 0)}
            moves.append((0, rest, r - 1))
        for kind, i in held:
            if i >= r:
                continue
            base = held - {(kind, i)}
            for keep_r in (False, True):  # keep h_i, or turn it into r_i
                mine = {("r" if keep_r else kind, i)}
                if kind == "s" and i > 0 and not keep_r:
                    mine_options = [mine, set()]  # a state may also be moved on
                else:
                    mine_options = [mine]
                for mine_ in mine_options:
                    for keep_next in (True, False):
                        nxt = {("s", i + 1)} if keep_next and i + 1 < r else set()
                        new = frozenset(base | mine_ | nxt)
                        if len(new) <= M and new != held:
                            moves.append((1, new, r))
        for cost, new, r_new in moves:
            key = (new, r_new)
            if d + cost < dist.get(key, 1 << 60):
                dist[key] = d + cost
                tie += 1
                heapq.heappush(queue, (d + cost, tie, key))
    raise AssertionError("no strategy found")


@pytest.mark.parametrize("T", [2, 3, 4, 5, 6, 7])
def test_dynamic_program_is_optimal_by_brute_force(T):
    for M in range(2, min(T, 4) + 1):
        assert forward_steps(T, M) == brute_force(T, M), (T, M)


@pytest.mark.parametrize("T", [1, 5, 17, 64])
@pytest.mark.parametrize("M", [2, 3, 5, 100])
def test_schedule_holds_at_most_M_slots_and_costs_F(T, M):
    steps, peak = simulate(schedule(T, M))
    assert peak <= M
    assert steps == forward_steps(T, M)
    if M >= T:
        assert recomputations(T, M) == 0


def test_recomputations_fall_as_the_budget_grows():
    r = [recomputations(30, M) for M in range(2, 31)]
    assert all(a >= b for a, b in zip(r, r[1:], strict=False))
    assert r[0] == 30 * 31 // 2 - 1 - 30 and r[-1] == 0


@pytest.mark.parametrize(
    "bad, err",
    [
        (4, TypeError),
        (Budget(1), ValueError),
        (Budget(3, 0), ValueError),
        (Budget(2.5), ValueError),
        (Budget(True), ValueError),
    ],
)
def test_bad_budgets_are_rejected(bad, err):
    with pytest.raises(err, match="max_states|unit|Budget"):
        check_budget(bad)


@pytest.mark.parametrize("M", [2, 4, 7])
def test_compiled_gradient_runs_exactly_the_scheduled_steps(M):
    # A host callback in each step counts the steps XLA actually executes.
    count = []

    def seg(c, x):
        n = x.shape[0]  # one segment call runs n steps
        jax.debug.callback(lambda _: count.append(n), x)
        total = 0.0
        for i in range(n):
            c, out = _one(c, x[i])
            total = total + out
        return c, total

    def f(c, xs):
        c, outs = scan_budget(seg, c, xs, 7, Budget(M))
        return c + sum(outs)

    xs = jnp.arange(7.0) / 10
    g = jax.jit(jax.grad(f))(0.3, xs)
    jax.effects_barrier()
    assert sum(count) == forward_steps(7, M)
    g_ref = jax.grad(_plain, argnums=1)(None, 0.3, xs)
    assert abs(float(g - g_ref)) <= 1e-10 * abs(float(g_ref))


def _plain(seg, c, xs):
    total = 0.0
    for i in range(xs.shape[0]):
        c, out = _one(c, xs[i])
        total = total + out
    return c + total


def _one(c, x):
    return jnp.tanh(1.1 * c + x), c**2


def _budget_loss(cell, loss_fn, budget):
    """L(params, h0, xs, ys) with rnn_scan segments under ``budget``."""

    def objective(params, h0, xs, ys):
        def segment(h, inp):
            xs_s, ys_s = inp
            h, outs = jbptt.rnn_scan(cell, params, h, xs_s)
            return h, sum_of_losses(loss_fn, params, outs, ys_s)

        h_T, losses = scan_budget(segment, h0, (xs, ys), xs.shape[0], budget)
        return sum(losses)

    return objective


@pytest.mark.parametrize("cell_name", ["elman", "lstm"])
@pytest.mark.parametrize("T, M, unit", [(9, 2, 1), (13, 4, 1), (16, 3, 2)])
def test_gradients_equal_uncheckpointed(cell_name, T, M, unit):
    model = jbptt.readout(getattr(jbptt.cells, cell_name)(), output_size=2)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = model.init(k1, 3, 5)
    xs = jax.random.normal(k2, (T, 2, 3))
    ys = jax.random.normal(k3, (T, 2, 2))
    h0 = model.cell.initial_state(params, (2,))
    (L_ref, _), g_ref = jbptt.value_and_grad(model.cell, model.loss_fn)(
        params, h0, xs, ys
    )
    f = _budget_loss(model.cell, model.loss_fn, Budget(M, unit))
    L, g = jax.jit(jax.value_and_grad(f))(params, h0, xs, ys)
    assert abs(float(L - L_ref)) <= 1e-12 * abs(float(L_ref))
    assert rel_err(g, g_ref) <= 1e-10


def test_concat_outs_rebuilds_rnn_scan_outputs():
    cell = jbptt.cells.elman()
    params = cell.init(jax.random.key(1), 2, 3)
    xs = jax.random.normal(jax.random.key(2), (10, 2))
    h0 = cell.initial_state(params)

    def seg(h, x):
        return jbptt.rnn_scan(cell, params, h, x)

    h_T, outs = scan_budget(seg, h0, xs, 10, Budget(3, 3))
    h_ref, outs_ref = jbptt.rnn_scan(cell, params, h0, xs)
    assert rel_err(concat_outs(outs), outs_ref) <= 1e-14
    assert rel_err(h_T, h_ref) <= 1e-14


def test_bench_memory_quick_runs(tmp_path):
    from benchmarks import bench_memory

    result = bench_memory.main(["--quick", "--out", str(tmp_path)])
    for name in ("results_memory.csv", "results_memory.json", "memory.png"):
        assert (tmp_path / name).exists(), name
    rows = {r["variant"].split("(")[0]: r for r in result["rows"]}
    assert set(rows) == {"none", "sqrt", "Budget"}
    budget = [r for r in result["rows"] if r["variant"].startswith("Budget")]
    assert [r["recomputed_steps"] for r in budget] == [2 * recomputations(6, 2), 0]
    assert all(r["grad_rel_err"] <= 1e-5 for r in result["rows"])  # float32


@pytest.mark.parametrize("cell_name", ["lstm", "elman"])
@pytest.mark.parametrize("M, unit", [(2, 1), (3, 1), (5, 3), (20, 1)])
def test_budget_loss_explicit_reverse_is_exact(cell_name, M, unit):
    from jbptt import truncation
    from jbptt._src.checkpointing import budget_loss

    model = jbptt.readout(getattr(jbptt.cells, cell_name)(), output_size=2)
    p = model.init(jax.random.key(0), 3, 4)
    T = 11
    xs = jax.random.normal(jax.random.key(1), (T, 2, 3))
    ys = jax.random.normal(jax.random.key(2), (T, 2, 2))
    h0 = model.cell.initial_state(p, (2,))
    w = truncation.tbptt(T, 4, dtype=xs.dtype)

    def obj(f):  # a loss and the final state both carry cotangents
        def g(p, h, xs):
            L, h_T = f(p, h, xs, ys, w)
            return 3.0 * L + jnp.sum(jax.tree_util.tree_leaves(h_T)[0])

        return jax.grad(g, argnums=(0, 1, 2))(p, h0, xs)

    ref = obj(jbptt.loss(model.cell, model.loss_fn))
    got = obj(budget_loss(model.cell, model.loss_fn, Budget(M, unit)))
    assert rel_err(got, ref) < 1e-10


@pytest.mark.parametrize("M", [2, 4])
def test_value_and_grad_takes_a_budget(M):
    model = jbptt.readout(jbptt.cells.gru(), output_size=1)
    p = model.init(jax.random.key(0), 2, 3)
    xs = jax.random.normal(jax.random.key(1), (9, 2))
    ys = jax.random.normal(jax.random.key(2), (9, 1))
    h0 = model.cell.initial_state(p)
    w = jbptt.truncation.tbptt(9, 4, dtype=xs.dtype)
    ref = jbptt.value_and_grad(model.cell, model.loss_fn, argnums=(0, 1))
    got = jbptt.value_and_grad(
        model.cell, model.loss_fn, argnums=(0, 1), adjoint=jbptt.Budget(M)
    )
    (L0, h0_T), g0 = ref(p, h0, xs, ys, w)
    (L1, h1_T), g1 = got(p, h0, xs, ys, w)
    assert rel_err((L1, h1_T), (L0, h0_T)) < 1e-12 and rel_err(g1, g0) < 1e-10
    with pytest.raises(ValueError, match="max_states"):
        jbptt.value_and_grad(model.cell, model.loss_fn, adjoint=jbptt.Budget(1))


# ------------------------------------------- the interpreter (loops, O(M)) ---


@pytest.mark.parametrize("T", [2, 3, 5, 7])
def test_program_runs_the_brute_force_optimum(T):
    from jbptt._src.revolve import program

    for M in range(2, min(T, 4) + 2):
        prog = program(T, Budget(M))
        assert prog.steps == brute_force(T, min(M, T)), (T, M)
        assert prog.slots <= M and max(prog.leaf_lengths, default=1) <= M


@pytest.mark.parametrize("T, M, unit", [(40, 2, 1), (40, 5, 1), (23, 3, 4), (9, 20, 1)])
def test_program_matches_the_schedule(T, M, unit):
    from jbptt._src.revolve import program

    prog = program(T, Budget(M, unit))
    n = -(-T // unit)
    if T % unit == 0:
        assert prog.steps == forward_steps(n, M) * unit
    assert prog.steps == _steps_of(schedule(n, M), T, unit)
    assert prog.slots <= min(M, n)
    assert simulate(schedule(n, M))[1] <= M


def _steps_of(tree, T, unit):
    """Steps the split tree runs, from the tree itself (blocks → steps)."""
    bounds = [min(i * unit, T) for i in range(-(-T // unit) + 1)]
    total = 0

    def run(node, first):
        nonlocal total
        if node[0] == "leaf":
            total += bounds[first + node[1]] - bounds[first]
            return
        _, s, head, tail = node
        total += bounds[first + s] - bounds[first]
        run(tail, first + s)
        run(head, first)

    run(tree, 0)
    return total


def _counting_cell(count):
    """A generic-path cell whose every step evaluation calls back to the host."""

    def init(key, i, h):
        k1, k2 = jax.random.split(key)
        return {
            "A": 0.4 * jax.random.normal(k1, (h, h)),
            "B": jax.random.normal(k2, (h, i)),
        }

    def step(p, h, x):
        jax.debug.callback(lambda: count.append(1))
        h = jnp.tanh(h @ p["A"].T + x @ p["B"].T)
        return h, h

    def initial_state(p, batch_shape=()):
        return jnp.zeros((*batch_shape, p["A"].shape[0]))

    return jbptt.cells.from_fn(init, step, initial_state, name="counting")


@pytest.mark.parametrize(
    "T, M, unit", [(11, 2, 1), (11, 3, 1), (11, 4, 2), (11, 12, 1)]
)
def test_compiled_budget_recomputes_exactly_the_optimal_steps(T, M, unit):
    # Host callbacks count the step evaluations XLA runs. The generic reverse
    # evaluates each step once more inside its per-step vjp, with or without
    # checkpointing, so the difference is the recomputed forward steps.
    from jbptt._src.revolve import program

    count = []
    cell = _counting_cell(count)
    p = cell.init(jax.random.key(0), 2, 3)
    xs = jax.random.normal(jax.random.key(1), (T, 2))
    ys = jax.random.normal(jax.random.key(2), (T, 3))
    h0 = cell.initial_state(p)

    def loss_fn(p, o, y):
        return jnp.sum((o - y) ** 2)

    def run(adjoint):
        vg = jbptt.value_and_grad(cell, loss_fn, adjoint=adjoint)
        f = jax.jit(lambda p: vg(p, h0, xs, ys)).lower(p).compile()
        jax.effects_barrier()
        count.clear()
        out = f(p)
        jax.effects_barrier()
        return len(count), out

    n_none, (_, g_none) = run(None)
    n_budget, (_, g) = run(Budget(M, unit))
    assert n_none == 2 * T
    prog = program(T, Budget(M, unit))
    assert n_budget - n_none == prog.steps - T
    if unit == 1:
        assert prog.steps - T == recomputations(T, M)
    assert rel_err(g, g_none) <= 1e-10


def _masked_problem(name, T, seed=0):
    from tests.helpers import CELLS, problem

    model, params, h0, xs, ys = problem(CELLS[name](), T=T, batch=(3,), seed=seed)
    lengths = jnp.array([T, 1, T - 4])
    resets = (
        jnp.zeros((T, 3), bool).at[jnp.array([3, 7, 8]), jnp.array([0, 0, 2])].set(True)
    )
    w = jax.random.uniform(jax.random.key(seed + 5), (T, 3), minval=0.0, maxval=2.0)
    return model, params, h0, xs, ys, lengths, resets, w


@pytest.mark.parametrize("name", ["elman_tanh", "lstm", "from_fn"])
@pytest.mark.parametrize("M, unit", [(2, 1), (4, 3), (30, 1)])
def test_budget_with_lengths_resets_and_weights_is_exact(name, M, unit):
    # T = 13: not a multiple of any unit; M = 30 ≥ T keeps everything.
    T = 13
    model, params, h0, xs, ys, lengths, resets, w = _masked_problem(name, T)
    plain = jbptt.loss(model.cell, model.loss_fn)
    kw = {"lengths": lengths, "resets": resets}
    (L_ref, hT_ref), g_ref = jax.value_and_grad(
        lambda p, h0: plain(p, h0, xs, ys, w, **kw), argnums=(0, 1), has_aux=True
    )(params, h0)
    vg = jbptt.value_and_grad(
        model.cell, model.loss_fn, argnums=(0, 1), adjoint=Budget(M, unit)
    )
    (L, h_T), g = jax.jit(lambda p, h0: vg(p, h0, xs, ys, w, **kw))(params, h0)
    assert rel_err((L, h_T), (L_ref, hT_ref)) <= 1e-12
    assert rel_err(g, g_ref) <= 1e-10

    # The executor itself, with a cotangent on h_T too and xs differentiated.
    from jbptt._src.checkpointing import budget_loss
    from jbptt._src.sequences import check_mask

    mask = check_mask(lengths, T, (3,))
    f = budget_loss(model.cell, model.loss_fn, Budget(M, unit))

    def obj(fn):
        def g(p, h0, xs):
            L, h_T = fn(p, h0, xs)
            return 3.0 * L + jnp.sum(jnp.cos(jax.tree_util.tree_leaves(h_T)[0]))

        return jax.grad(g, argnums=(0, 1, 2))(params, h0, xs)

    got = obj(lambda p, h0, xs: f(p, h0, xs, ys, w, mask, resets, h0))
    ref = obj(lambda p, h0, xs: plain(p, h0, xs, ys, w, **kw))
    assert rel_err(got, ref) <= 1e-10


@pytest.mark.parametrize("name", ["elman_tanh", "gru", "from_fn"])
@pytest.mark.parametrize("M, unit", [(2, 1), (3, 2)])
def test_budget_rnn_scan_is_exact(name, M, unit):
    T = 11
    model, params, h0, xs, ys, lengths, resets, w = _masked_problem(name, T, seed=3)
    cell, p = model.cell, params
    h_state = jax.tree_util.tree_map(lambda a: 0.5 * a + 0.1, h0)

    def loss(scan, **kw):
        def f(p, h0, xs):
            h_T, outs = scan(
                cell,
                p,
                h0,
                xs,
                w,
                lengths=lengths,
                resets=resets,
                reset_state=h_state,
                **kw,
            )
            leaf = jax.tree_util.tree_leaves(outs)[0]
            return jnp.sum(jnp.sin(leaf) * ys[..., :1]) + jnp.sum(
                jax.tree_util.tree_leaves(h_T)[0] ** 2
            ), (h_T, outs)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))

    g_ref, out_ref = loss(jbptt.rnn_scan, adjoint=jbptt.Autodiff())(p, h0, xs)
    # rnn_scan takes the budget as its adjoint= strategy
    g, out = loss(jbptt.rnn_scan, adjoint=Budget(M, unit))(p, h0, xs)
    assert rel_err(out, out_ref) <= 1e-12
    assert rel_err(g, g_ref) <= 1e-10


def test_rnn_scan_budget_refuses_autodiff_mode():
    cell = jbptt.cells.elman()
    p = cell.init(jax.random.key(0), 2, 3)
    with pytest.raises(ValueError, match="Budget.*autodiff"):
        jbptt.rnn_scan(cell, p, cell.initial_state(p), jnp.ones((5, 2)),
                       checkpoint=Budget(2), mode="autodiff")  # fmt: skip


def test_budget_temporaries_fall_with_the_budget():
    # XLA's compiled memory analysis (deterministic, not a timing): with the
    # schedule's levels in loops, temporaries scale with M, far below the
    # uncheckpointed O(T) residuals.
    cell = jbptt.cells.elman()
    T, H = 2000, 16
    p = cell.init(jax.random.key(0), 4, H)
    xs = jax.random.normal(jax.random.key(1), (T, 1, 4))
    ys = jax.random.normal(jax.random.key(2), (T, 1, H))
    h0 = cell.initial_state(p, (1,))

    def loss_fn(p, o, y):
        return jnp.sum((o - y) ** 2)

    def temp(adjoint):
        vg = jbptt.value_and_grad(cell, loss_fn, adjoint=adjoint)
        c = jax.jit(lambda p: vg(p, h0, xs, ys)).lower(p).compile()
        return c.memory_analysis().temp_size_in_bytes

    none = temp(None)
    budget = [temp(Budget(M, 40)) for M in (2, 3, 5)]
    assert budget[0] < budget[1] < budget[2] < none / 4, (budget, none)


def test_budget_vmaps_over_link_weights():
    # Sweeps vmap value_and_grad over w: the program's branch indices stay
    # unbatched, so vmap batches the reverse scans only.
    model = jbptt.readout(jbptt.cells.lstm(), output_size=2)
    p = model.init(jax.random.key(0), 3, 4)
    T = 9
    xs = jax.random.normal(jax.random.key(1), (T, 2, 3))
    ys = jax.random.normal(jax.random.key(2), (T, 2, 2))
    h0 = model.cell.initial_state(p, (2,))
    ws = jax.random.uniform(jax.random.key(3), (3, T), maxval=2.0)

    def grads(adjoint):
        vg = jbptt.value_and_grad(model.cell, model.loss_fn, adjoint=adjoint)
        return jax.jit(jax.vmap(lambda w: vg(p, h0, xs, ys, w)[1]))(ws)

    assert rel_err(grads(Budget(2)), grads(None)) <= 1e-10


# ------------------------------------- the closed form against the table ---


def _dynamic_program(T: int, M: int):
    """F[m, t] by the recurrence itself, O(M·T²): the table the closed form
    replaced (leaf t ≤ m costs t; else min_s s + F(t−s, m−1) + F(s, m))."""
    INF = np.iinfo(np.int64).max // 4
    F = np.full((M + 1, T + 1), INF, dtype=np.int64)
    F[:, 0] = 0
    for m in range(1, M + 1):
        F[m, 1 : m + 1] = np.arange(1, min(m, T) + 1)
        for t in range(m + 1, T + 1):
            s = np.arange(1, t)
            F[m, t] = min(int(np.min(s + F[m - 1, t - s] + F[m, s])), INF)
    return F


def test_closed_form_equals_the_dynamic_program_exhaustively():
    # Every T ≤ 200 and M ≤ 8: the optimum and an optimal split.
    from jbptt._src.revolve import split

    F = _dynamic_program(200, 8)
    for M in range(2, 9):
        for T in range(1, 201):
            assert forward_steps(T, M) == F[min(M, T), T], (T, M)
            if T > M:
                s, _ = split(T, M)
                assert 1 <= s < T and s + F[M, s] + F[M - 1, T - s] == F[M, T]
    assert [forward_steps(T, 1) for T in (0, 1)] == [0, 1]
    with pytest.raises(ValueError, match="max_states"):
        forward_steps(2, 1)


def _replay(prog, T: int, M: int, unit: int = 1) -> int:
    """Run a Program's actions on a model of its slots and return the forward
    steps: each range starts at the step whose state its slot holds, the
    leaves reverse T−1, …, 0 in order, and the states kept plus a leaf's
    residuals (in blocks of ``unit``) never exceed M."""
    held, steps = {0: 0}, 0
    for i, (a, b) in enumerate(prog.spine.tolist()):
        assert held[i] == a < b and i + 1 < M
        held[i + 1], steps = b, steps + b - a
    d, (a, b) = len(prog.spine), prog.first_leaf
    assert held[d] == a and b == T and d + -(-(b - a) // unit) <= M
    done, steps = a, steps + b - a  # reversed down to step `done`
    cols = (prog.kind, prog.slot, prog.start, prog.stop)
    for kind, slot, a, b in zip(*(v.tolist() for v in cols), strict=True):
        assert held[slot] == a < b, (kind, slot, a, b)
        steps += b - a
        if kind == ADVANCE:  # advance: store the state at b in the next slot
            assert slot + 1 < prog.slots <= M
            held[slot + 1] = b
        else:  # leaf: re-run a..b−1 with residuals and reverse them at once
            assert b == done and slot + -(-(b - a) // unit) <= M
            done = a
    assert done == 0
    return steps


@pytest.mark.parametrize(
    "T, M, unit", [(100_000, 16, 1), (100_000, 2, 1), (3001, 3, 1), (1000, 5, 7)]
)
def test_long_plan_keeps_the_invariants(T, M, unit):
    # Not timed: planning T = 100 000 is milliseconds (no T×M table); the
    # replay checks every action and the count against the closed form.
    from jbptt._src.revolve import program

    prog = program(T, Budget(M, unit))
    n = -(-T // unit)
    assert _replay(prog, T, M, unit) == prog.steps
    if unit == 1:
        assert prog.steps - T == recomputations(T, M)
    assert prog.slots <= M and len(prog.leaf_lengths) <= M
    assert prog.steps == _steps_of_blocks(n, M, T, unit)


def _steps_of_blocks(n, M, T, unit):
    """Forward steps of the n-block schedule in steps (a short last block)."""
    if T % unit == 0:
        return forward_steps(n, M) * unit
    return _steps_of(schedule(n, M), T, unit)


@pytest.mark.parametrize("M", [3, 8])
def test_budget_gradients_at_longer_T_equal_the_reverse_scan(M):
    model = jbptt.readout(jbptt.cells.lstm(), output_size=2)
    T = 150
    p = model.init(jax.random.key(0), 3, 4)
    xs = jax.random.normal(jax.random.key(1), (T, 2, 3))
    ys = jax.random.normal(jax.random.key(2), (T, 2, 2))
    h0 = model.cell.initial_state(p, (2,))
    ref = jbptt.value_and_grad(model.cell, model.loss_fn, argnums=(0, 1))
    got = jbptt.value_and_grad(
        model.cell, model.loss_fn, argnums=(0, 1), adjoint=Budget(M)
    )
    (L0, _), g0 = jax.jit(ref)(p, h0, xs, ys)
    (L1, _), g1 = jax.jit(got)(p, h0, xs, ys)
    assert rel_err(L1, L0) < 1e-12 and rel_err(g1, g0) < 1e-10


def test_traced_program_does_not_grow_with_T():
    # The schedule runs as loops over action arrays: the jaxpr has the same
    # equations at T = 2 000 and T = 20 000 (only the arrays grow).
    cell = jbptt.cells.elman()
    p = cell.init(jax.random.key(0), 2, 3)

    def loss_fn(p, o, y):
        return jnp.sum((o - y) ** 2)

    def eqns(T):
        xs, ys = jnp.ones((T, 2)), jnp.ones((T, 3))
        vg = jbptt.value_and_grad(cell, loss_fn, adjoint=Budget(4))
        text = str(jax.make_jaxpr(lambda p: vg(p, cell.initial_state(p), xs, ys))(p))
        return len([line for line in text.splitlines() if " = " in line])

    assert eqns(2000) == eqns(20_000)
