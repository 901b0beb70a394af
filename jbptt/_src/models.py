"""The model of the BPTT literature: a cell, a linear readout ``V h + c`` (or an
MLP) and a per-step loss, with the readout's params inside the model's params;
optionally an embedding of integer tokens in front of the cell."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jbptt._src import _init
from jbptt._src.adapters import scoped
from jbptt._src.cell import Cell


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
    if jnp.shape(y) != jnp.shape(logits)[:-1]:
        raise ValueError(
            f"ys[t] has shape {jnp.shape(y)} but the readout's logits are "
            f"{jnp.shape(logits)}: ys must hold integer labels [T, ...] "
            "(xent loss)."
        )
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


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
        ``"xent"`` (softmax cross-entropy, ``y`` integer labels ``[...]``).
        Both average over batch dimensions and sum over time.
      vocab_size: when given, the model reads integer tokens in
        ``[0, vocab_size)`` through an embedding ``E[vocab_size, input_size]``
        (``params["embed"]``): the cell sees ``E[token_t]``. Pass the integer
        ids ``[T, *batch]`` as ``xs`` to :func:`jbptt.loss`,
        :func:`jbptt.value_and_grad`, :func:`jbptt.rnn_scan` or
        :func:`jbptt.train.train` (``model.encode`` gives the equivalent
        float ids ``[T, ..., 1]``, the form the scan runs on); the
        embedding's gradient is the scatter-add of the cell's input
        cotangents, and it stays on the cell's fast path (the lookup is part
        of the cell's input projection).
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
    if not isinstance(output_size, int) or output_size <= 0:
        raise ValueError(f"output_size must be a positive int, got {output_size!r}.")
    if vocab_size is not None and (
        not isinstance(vocab_size, int)
        or isinstance(vocab_size, bool)
        or vocab_size <= 0
    ):
        raise ValueError(
            f"vocab_size must be None or a positive int, got {vocab_size!r}."
        )
    if isinstance(hidden, int) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in hidden
    ):
        raise ValueError(
            f"hidden must be a sequence of positive ints (MLP layer sizes), "
            f"got {hidden!r}."
        )
    hidden = tuple(hidden)
    per_step = _LOSSES[loss]

    def init(key, input_size, hidden_size, **kwargs):
        # Same keys as a plain linear readout always had, so a seed gives the
        # same params as before heads and embeddings existed.
        k_cell, k_out = jax.random.split(key)
        cell_params = cell.init(k_cell, input_size, hidden_size, **kwargs)
        dtype = jax.tree_util.tree_leaves(cell_params)[0].dtype
        top = _out_size(hidden_size)
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

    if vocab_size is None:
        return Model(scoped(cell, "cell"), loss_fn, init, predict)
    return Model(embedded(cell, vocab_size), loss_fn, init, predict, _encode)


def _out_size(hidden_size):
    # A stack's hidden_size may list every layer's size: the top one is read.
    return hidden_size if isinstance(hidden_size, int) else tuple(hidden_size)[-1]


def _encode(tokens, dtype=None):
    """Integer ids ``[T, ...]`` -> floats ``[T, ..., 1]`` (exact below 2^24 in f32)."""
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}.")
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
        # Ids are data: no gradient flows into them (float -> int cast).
        ids = jax.lax.stop_gradient(xs[..., 0]).astype(jnp.int32)
        return jnp.take(params["embed"], ids, axis=0)

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
    )
