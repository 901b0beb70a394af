"""The model of the BPTT literature: a cell, a linear readout ``V h + c`` (or an
MLP) and a per-step loss, with the readout's params inside the model's params;
optionally an embedding of integer tokens in front of the cell."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jbptt._src import _init, checks, validation
from jbptt._src.adapters import scoped
from jbptt._src.cell import Cell, layer_params_of


class Model(NamedTuple):
    """A cell with a readout and a loss; params are ``{"cell", "readout"}``
    (and ``"embed"`` for a token model).

    Attributes:
      cell: the cell, reading ``params["cell"]`` (and ``params["embed"]``)
        (use with any jbptt function that takes a cell).
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar`` (batch mean).
      init: ``(key, input_size, hidden_size) -> params``.
      predict: ``(params, outs[..., H]) -> [..., output_size]``.
      encode: ``(tokens[T, ...], dtype=None) -> xs[T, ..., 1]``: integer token
        ids as the floating inputs the cell of a token model takes (the
        identity for other models).
    """

    cell: Cell
    loss_fn: Callable
    init: Callable
    predict: Callable
    encode: Callable = lambda xs, dtype=None: xs


def _mse(pred, y):
    # ½‖ŷ − y‖² over features, mean over the batch. Shapes must match exactly:
    # a broadcast (e.g. ys[t] of shape [B, 1] against ŷ [B, O]) is a wrong loss.
    if jnp.shape(pred) != jnp.shape(y):
        raise ValueError(
            f"ys[t] has shape {jnp.shape(y)} but the readout predicts "
            f"{jnp.shape(pred)}: ys must be [T, ..., output_size] like the "
            "predictions (mse loss)."
        )
    return jnp.mean(0.5 * jnp.sum((pred - y) ** 2, axis=-1))


def _xent(logits, y):
    # −log softmax(ŷ)[y] for integer labels, mean over the batch.
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise TypeError(
            f"ys must hold integer class labels in [0, {jnp.shape(logits)[-1]}) "
            f"for the xent loss, got dtype {jnp.result_type(y)}; a float label "
            "is not a class (convert with ys.astype(jnp.int32))."
        )
    if jnp.shape(y) != jnp.shape(logits)[:-1]:
        raise ValueError(
            f"ys[t] has shape {jnp.shape(y)} but the readout's logits are "
            f"{jnp.shape(logits)}: ys must hold integer labels [T, ...] "
            "(xent loss)."
        )
    logp = jax.nn.log_softmax(logits, axis=-1)
    # A label outside [0, C) would read another class (−1: the last) or
    # nothing: it makes the loss and its gradient NaN instead.
    label, poison = _safe_index(y, jnp.shape(logits)[-1], logp.dtype)
    picked = jnp.take_along_axis(logp, label[..., None], axis=-1)[..., 0]
    return -jnp.mean(picked * poison)


def _safe_index(ids, size: int, dtype):
    """``(ids clipped into [0, size), 1 where ids was valid else NaN)``: an
    index that cannot read the wrong row, and a factor that poisons whatever
    an invalid one touches."""
    ok = (ids >= 0) & (ids < size)
    if jnp.issubdtype(jnp.result_type(ids), jnp.floating):
        ok &= ids == jnp.floor(ids)  # float ids must be whole
    safe = jnp.clip(ids, 0, size - 1).astype(jnp.int32)
    return safe, jnp.where(ok, jnp.ones((), dtype), jnp.full((), jnp.nan, dtype))


_LOSSES = {"mse": _mse, "xent": _xent}


def readout(
    cell: Cell,
    output_size: int,
    loss: str = "mse",
    *,
    vocab_size: int | None = None,
    hidden: Sequence[int] = (),
) -> Model:
    """Attach a readout ``ŷ_t = V h_t + c`` (or an MLP) and a per-step loss.

    Args:
      cell: any :class:`jbptt.cells.Cell` (a stack too).
      output_size: size of ``ŷ_t`` (number of classes for ``"xent"``).
      loss: ``"mse"`` (½‖ŷ−y‖², ``y`` float ``[..., output_size]``) or
        ``"xent"`` (softmax cross-entropy, ``y`` integer labels ``[...]`` in
        ``[0, output_size)``; a float ``ys`` is a TypeError at trace time).
        Both average over batch dimensions and sum over time.
      vocab_size: when given, the model reads integer tokens in
        ``[0, vocab_size)`` through an embedding ``E[vocab_size, input_size]``
        (``params["embed"]``): the cell sees ``E[token_t]``. Pass the integer
        ids ``[T, *batch]`` as ``xs`` to :func:`jbptt.loss`,
        :func:`jbptt.value_and_grad`, :func:`jbptt.rnn_scan`,
        :func:`jbptt.estimators.estimate`, an online estimator's
        ``estimate`` or the trainer (``model.encode`` gives the equivalent
        float ids ``[T, ..., 1]``, the form the scan runs on and the one a
        ``Problem`` and :func:`jbptt.sweep.sweep` take); the
        embedding's gradient is the scatter-add of the cell's input
        cotangents, and it stays on the cell's fast path (the lookup is part
        of the cell's input projection).

        Out-of-range ids: inside ``jit`` values are not inspected, so an
        id outside ``[0, vocab_size)`` (or a float id that is not whole) is
        not refused there: its embedding is NaN, hence the loss and the
        gradients are NaN (it never silently reads another row, as ``-1``
        would read the last). The same holds for an ``"xent"`` label
        outside ``[0, output_size)``. The host check is
        :func:`jbptt.checks.check_tokens` (``check_tokens(xs, vocab_size,
        "xs")``, and ``check_tokens(ys, output_size, "ys")`` for labels);
        ``model.encode``, :func:`jbptt.sweep.sweep` and
        :func:`jbptt.sweep.sample_estimates` call it on concrete data.
      hidden: sizes of tanh hidden layers of an MLP readout
        ``ŷ = V tanh(… tanh(V₁ h + c₁) …) + c`` (default: linear).

    Examples:
      >>> import jax
      >>> import jbptt
      >>> model = jbptt.readout(jbptt.cells.gru(), output_size=5, loss="xent")
      >>> params = model.init(jax.random.key(0), 5, 16)
      >>> sorted(params), params["readout"]["V"].shape
      (['cell', 'readout'], (5, 16))

      A token model with an MLP head (``input_size`` is the embedding size):

      >>> import jax.numpy as jnp
      >>> model = jbptt.readout(jbptt.cells.lstm(), 7, "xent", vocab_size=7,
      ...                       hidden=(32,))
      >>> params = model.init(jax.random.key(0), 8, 16)
      >>> tokens = jnp.zeros((10, 4), jnp.int32)  # [T, B] ids
      >>> h0 = model.cell.initial_state(params, (4,))
      >>> L, h_T = jbptt.loss(model.cell, model.loss_fn)(params, h0, tokens, tokens)
      >>> model.encode(tokens, jnp.float32).shape, params["embed"].shape
      ((10, 4, 1), (7, 8))
    """
    if loss not in _LOSSES:
        raise ValueError(
            f"Unknown loss {loss!r}. It needs to be one of {sorted(_LOSSES)}."
        )
    output_size = validation.positive_int("output_size", output_size)
    if vocab_size is not None:
        vocab_size = validation.positive_int(
            "vocab_size", vocab_size, "None or a positive int"
        )
    hidden = _check_hidden(hidden)
    per_step = _LOSSES[loss]

    def init(key, input_size, hidden_size, **kwargs):
        # Same keys as a plain linear readout always had, so a seed gives the
        # same params as before heads and embeddings existed.
        key = validation.prng_key("key", key)
        k_cell, k_out = jax.random.split(key)
        cell_params = cell.init(k_cell, input_size, hidden_size, **kwargs)
        dtype = jax.tree_util.tree_leaves(cell_params)[0].dtype
        top = _out_size(hidden_size)
        if cell.diagonal is not None:
            # a diagonal cell's readout sets its output's size (the LRU's
            # Re(C h) + D x has the input's), not the state's
            h = cell.initial_state(cell_params, ())
            x = jax.ShapeDtypeStruct((input_size,), dtype)
            top = jax.eval_shape(cell.step, cell_params, h, x)[1].shape[-1]
        sizes = (top, *hidden)
        keys = jax.random.split(k_out, len(sizes)) if hidden else [k_out]
        layers = [
            _init.torch_style(k, {"V": (n, m), "c": (n,)}, m, dtype)
            for k, m, n in zip(keys, sizes, (*hidden, output_size), strict=True)
        ]
        ro = dict(layers[-1])
        if hidden:
            ro["hidden"] = tuple(layers[:-1])
        params = {"cell": cell_params, "readout": ro}
        if vocab_size is not None:  # N(0, 1) rows, like torch.nn.Embedding
            k_emb = jax.random.fold_in(key, 1)
            params["embed"] = jax.random.normal(k_emb, (vocab_size, input_size), dtype)
        return params

    def predict(params, outs):
        ro = params["readout"]
        z = outs
        for layer in ro.get("hidden", ()):
            z = jnp.tanh(z @ layer["V"].T + layer["c"])
        return z @ ro["V"].T + ro["c"]

    def loss_fn(params, out_t, y_t):
        return per_step(predict(params, out_t), y_t)

    if loss == "xent":  # host-level checks read it (checks.check_data)
        loss_fn.num_classes = output_size

    if vocab_size is None:
        return Model(scoped(cell, "cell"), loss_fn, init, predict)
    encode = functools.partial(_encode, vocab_size=vocab_size)
    return Model(embedded(cell, vocab_size), loss_fn, init, predict, encode)


def _check_hidden(hidden) -> tuple[int, ...]:
    what = "a sequence of positive ints (MLP layer sizes)"
    if isinstance(hidden, str) or not hasattr(hidden, "__iter__"):
        raise ValueError(f"hidden must be {what}, got {hidden!r}.")
    try:
        return tuple(validation.positive_int("hidden", n, what) for n in hidden)
    except (TypeError, ValueError):
        raise ValueError(f"hidden must be {what}, got {hidden!r}.") from None


def _out_size(hidden_size):
    # A stack's hidden_size may list every layer's size: the top one is read.
    if isinstance(hidden_size, numbers.Integral):  # NumPy ints too
        return int(hidden_size)
    return tuple(hidden_size)[-1]


def _encode(tokens, dtype=None, *, vocab_size):
    """Integer ids ``[T, ...]`` -> floats ``[T, ..., 1]`` (exact below 2^24 in f32).

    Concrete ids are checked against the vocabulary on the host
    (:func:`jbptt.checks.check_tokens`); traced ones are not (an id out of
    range gives NaN in the model, see :func:`readout`).
    """
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(
            f"tokens must be integer ids in [0, {vocab_size}), got dtype "
            f"{tokens.dtype}."
        )
    if not validation.is_traced(tokens):
        checks.check_tokens(tokens, vocab_size, "tokens")
    dtype = jnp.zeros((), float).dtype if dtype is None else dtype
    return tokens[..., None].astype(dtype)


def embedded(cell: Cell, vocab_size: int) -> Cell:
    """``cell`` reading ``E[token_t]``, with ``E = params["embed"]``.

    The input ``x_t`` is a token id held as a float ``[..., 1]``
    (see :func:`readout`'s ``encode``); the cell's params are
    ``params["cell"]``. The lookup sits in front of the cell's input
    projection (``project`` and ``linear`` of its rules), so a cell with
    hand-derived rules keeps them: the gradient of ``E`` is the scatter-add
    of the input cotangents from the vjp of ``linear``.
    """

    def lookup(params, xs):
        if xs.shape[-1] != 1:
            raise ValueError(
                f"xs of a token model must be ids of shape (T, ..., 1) (see "
                f"model.encode), got shape {tuple(xs.shape)}."
            )
        # Ids are data: no gradient flows into them (float -> int cast). An
        # invalid id (outside [0, V), or not whole) poisons its row with NaN
        # instead of reading another token's.
        E = params["embed"]
        ids, poison = _safe_index(
            jax.lax.stop_gradient(xs[..., 0]), vocab_size, E.dtype
        )
        return jnp.take(E, ids, axis=0) * poison[..., None]

    rules = cell.rules
    if rules is not None:
        inner = rules

        def cell_only(fn):
            return lambda params, *args: fn(params["cell"], *args)

        rules = inner._replace(
            project=lambda params, xs: inner.project(
                params["cell"], lookup(params, xs)
            ),
            forward=cell_only(inner.forward),
            backward=cell_only(inner.backward),
            linear=lambda params, xs, *args: inner.linear(
                params["cell"], lookup(params, xs), *args
            ),
        )

    def step(params, h, x):
        return cell.step(params["cell"], h, lookup(params, x))

    diagonal = cell.diagonal
    if diagonal is not None:  # the lookup in front of the gates and readout
        gates, readout = diagonal
        diagonal = diagonal._replace(
            gates=lambda params, xs: gates(params["cell"], lookup(params, xs)),
            readout=lambda params, h, xs: readout(
                params["cell"], h, lookup(params, xs)
            ),
        )

    layers, layer_params = _embedded_layers(cell, vocab_size)
    # Marks the cell as reading token ids: loss, value_and_grad, rnn_scan and
    # train then take integer xs [T, *batch] (jbptt._src.sequences.as_inputs).
    step.vocab_size = vocab_size
    return Cell(
        init=cell.init,
        initial_state=lambda params, *args: cell.initial_state(params["cell"], *args),
        step=step,
        rules=rules,
        input_size=lambda params: 1,
        name=f"embed({vocab_size}) -> {cell.name}",
        diagonal=diagonal,
        diagonal_layers=layers,
        layer_params=layer_params,
    )


def _embedded_layers(cell: Cell, vocab_size: int):
    """``(diagonal_layers, layer_params)`` of a diagonal stack behind the
    lookup: its first layer reads the ids through the lookup (params
    ``{"embed", "cell": its own}``), the others their own params, so the
    stack keeps its layer-by-layer path; ``(None, None)`` for other cells."""
    if cell.diagonal_layers is None:
        return None, None
    first, *rest = cell.diagonal_layers

    def layer_params(params):
        own = layer_params_of(cell, params["cell"])
        return ({**params, "cell": own[0]}, *own[1:])

    return (embedded(first, vocab_size), *rest), layer_params
