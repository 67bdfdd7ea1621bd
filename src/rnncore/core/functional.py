"""Stateless forward and backward of every cell type over a sequence: arrays in,
arrays out, no objects, for embedding in other numeric code.

Shapes are time-major: x (T, B, I), states (B, n). `*_forward(..., training=True)`
returns a context as its last value; the matching `*_backward(ctx, dy, ...)` takes it
and returns the input gradient, the initial-state gradient and a dict of parameter
gradients keyed by the parameter names of the forward call. With training=False the
context is None and nothing is kept.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
from numpy.typing import ArrayLike

from ..backends import contract, registry
# the backend and thread settings, reached by the wings above core through this door
from ..backends.registry import backends, follow_threads, get_backend, set_num_threads  # noqa: F401
from . import validate
from .docs import filled
from .spec import ACTIVATIONS, KINDS, OUTPUT_ACTIVATIONS, CellSpec

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
           "jordan_forward", "jordan_backward"]


def check_backend(name):
    """Refuse a backend name that is unknown or unavailable here (a ValueError naming it)."""
    registry.check_name(name)


def _warmup_kinds(kinds):
    if kinds is None:
        return KINDS
    if isinstance(kinds, str):
        kinds = (kinds,)
    try:
        kinds = tuple(kinds)
    except TypeError:
        raise TypeError(f"warmup: kinds: expected None, a cell kind or a list of them, got {kinds!r}") from None
    for kind in kinds:
        if not isinstance(kind, str) or kind not in KINDS:
            raise ValueError(f"warmup: kinds: expected names from {list(KINDS)}, got {kind!r}")
    return tuple(dict.fromkeys(kinds))


def _warmup_dtypes(dtypes):
    if dtypes is None:
        return validate.FLOAT_DTYPES
    if isinstance(dtypes, (str, type, np.dtype)):
        dtypes = (dtypes,)
    try:
        dtypes = tuple(dtypes)
    except TypeError:
        raise TypeError(f"warmup: dtypes: expected None, float32, float64 or a list of them, got {dtypes!r}") from None
    return tuple(dict.fromkeys(validate.float_dtype(dtype, "warmup: dtypes") for dtype in dtypes))


def _warmup_backend(backend):
    if backend is None:
        return registry.get_backend()
    if not isinstance(backend, str):
        raise TypeError(f"warmup: backend: expected None or a backend name, got {backend!r}")
    try:
        registry.check_name(backend)
    except ValueError as error:
        raise ValueError(f"warmup: {error}") from None
    return backend


def warmup(kinds=None, dtypes=None, training=True, backend=None):
    """Compile the numba backend's kernels ahead of their first use.

    The numba backend compiles each kernel family at its first call in a process
    (15-20 s each, announced on stderr or through the "rnncore" logger) unless numba's
    disk cache already holds it, in which case it is loaded in well under a second.
    `warmup` does that work now, for the families named, so that the first real call
    is fast. On the cython and numpy backends there is nothing to compile: it checks its
    arguments and returns an empty dict at once.

    Parameters
    ----------
    kinds : str or sequence of str, optional
        Cell kinds among "rnn", "lstm", "gru", "jordan"; None (default) means all.
        "rnn" and "jordan" share their kernels.
    dtypes : dtype or sequence of dtypes, optional
        float32 and/or float64; None (default) means both.
    training : bool, default True
        Also compile the backward kernels; False compiles the forward (inference and
        training forward share one kernel) only.
    backend : str, optional
        The backend to warm up: None (default) the selected one (`rnncore.get_backend`);
        "numba" compiles numba's kernels whatever the selection, for layers built with
        ``backend="numba"``.

    Returns
    -------
    dict
        Seconds spent per family, keyed by ``(kind, dtype name)``, e.g.
        ``("lstm", "float32")``: near zero for a family already loaded in this process,
        under a second for one loaded from the cache. Empty for the cython and numpy
        backends.

    Raises
    ------
    ValueError
        An unknown cell kind; a backend name that is unknown or not available here,
        naming it.
    TypeError
        A dtype other than float32 or float64, `kinds`, `dtypes` or `backend` of the
        wrong type, or `training` not a bool.

    Examples
    --------
    >>> import rnncore as rc
    >>> times = rc.warmup(kinds=["lstm"], dtypes=["float32"])
    >>> list(times) in ([], [("lstm", "float32")])
    True
    >>> rc.warmup(backend="numpy")
    {}
    """
    kinds, dtypes = _warmup_kinds(kinds), _warmup_dtypes(dtypes)
    training = validate.flag("warmup: training", training)
    if _warmup_backend(backend) != "numba":
        return {}
    numba_backend = registry.resolve("numba")
    times = {}
    for kind in kinds:
        for dtype in dtypes:
            start = time.perf_counter()
            numba_backend.warmup(CellSpec(kind, 1, 1, output_size=1 if kind == "jordan" else 0), dtype, training)
            times[(kind, dtype.name)] = time.perf_counter() - start
    return times



class _Context:
    """What a training-mode pass through a backend keeps for its backward: the backend
    that made it, its own context, and the cell, (T, B) and dtype of the call. Opaque to
    users."""
    __slots__ = ("backend", "inner", "spec", "shape", "dtype")

    def __init__(self, backend, inner, spec, shape, dtype):
        self.backend, self.inner, self.spec, self.shape, self.dtype = backend, inner, spec, shape, dtype


# -- the door: every call of a backend goes through these two ---------------------------

def run_layer(spec, params, x, states, lengths, training, reverse, backend=None, masks=None, memory="full"):
    """One layer of `spec`, one or two directions, through a backend: the layers, the cells
    and the functions below all reach the backends here, and nowhere else. The arrays
    are trusted, as `validate.sequence_call` returns them: x C-contiguous (T, B, I),
    params [{name: array}] and states [(C-contiguous (B, n) per state)] per direction,
    lengths int64 (B,) or None, reverse a bool per direction. The backend (a name, None:
    the current selection) and the thread count are resolved here, once per call, and
    passed down. Returns y (T, B, D*W), the final states per direction, and a context for
    `run_layer_backward` (None unless training). `masks`: the regularised cells' random
    masks per direction (`contract.MASKS`), None for their deterministic form. `memory`:
    what a training call keeps for its backward (`contract.MEMORY`), checked by the
    caller."""
    module = registry.resolve(backend)
    y, states_n, inner = module.layer_forward(spec, params, x, states, lengths, training, reverse,
                                              registry.get_num_threads(), masks=masks, memory=memory)
    return y, states_n, (_Context(module, inner, spec, x.shape[:2], x.dtype) if training else None)


def check_memory(memory):
    """`memory` if it is one of `contract.MEMORY`, else the ValueError naming it."""
    return validate.choice("memory", memory, contract.MEMORY)


def trace_layer(spec, params, x, states, lengths, reverse, backend=None):
    """The gate trace of one layer (arrays trusted as for `run_layer`): per direction
    {name: (T, B, H)} of the deterministic forward, from the backend's own
    `layer_trace`, or from the NumPy reference's for a backend without one."""
    module = registry.resolve(backend)
    if getattr(module, "layer_trace", None) is None:
        module = registry.resolve("numpy")
    return module.layer_trace(spec, params, x, states, lengths, reverse, registry.get_num_threads())


def open_stream(specs, params, batch, dtype, backend=None):
    """The step stack of a stream (`rnncore.core.stream.Stream`): a stack of
    one-direction layers of `specs` over `params` (per layer, {name: array}, the stream's
    own copies) stepping `batch` rows, on the backend's own stepping loop where it has
    one, else on one-step calls of its layer_forward (`contract.StepStack`)."""
    module = registry.resolve(backend)
    opener = getattr(module, "open_stream", None)
    if opener is not None:
        return opener(specs, params, batch, dtype, registry.get_num_threads())
    return contract.StepStack(module.layer_forward, specs, params, batch, dtype, registry.get_num_threads())


def run_layer_backward(ctx, dy, dstates, input_grad=True):
    """Back through a `run_layer`, on the backend that ran it, at the thread count of now:
    dy C-contiguous (T, B, D*W) and dstates as `run_layer`'s states. Returns dx (None
    unless `input_grad`), the initial states' gradients per direction and the parameter
    gradients per direction."""
    return ctx.backend.layer_backward(ctx.inner, dy, dstates, registry.get_num_threads(),
                                      input_grad=input_grad)


def _forward(spec, params, x, given, lengths, reverse, training, check_finite, backend, state_names):
    """Validate everything against `spec`, then run one direction."""
    reverse, training = validate.flag("reverse", reverse), validate.flag("training", training)
    form = validate.SequenceForm(spec, validate.TIME_MAJOR, state_names, ())
    x, states, lengths, _, weights = validate.sequence_call(form, x, given, lengths, check_finite, training,
                                                            weights=params)
    y, (states_n,), ctx = run_layer(spec, [weights], x, [states], lengths, training, (reverse,), backend)
    return y, states_n, ctx


def _backward(ctx, dy, given, grad_names):
    if not isinstance(ctx, _Context):
        raise TypeError(f"ctx: expected the context of a training-mode forward, got {type(ctx).__name__}")
    form = validate.SequenceForm(ctx.spec, validate.TIME_MAJOR, (), grad_names, dtype=ctx.dtype,
                                 source="the forward's dtype")
    dy, dstates = validate.sequence_grads(form, dy, given, ctx.shape + (ctx.spec.out_size,), True,
                                          check_finite=False)
    dx, (dstates0,), (grads,) = run_layer_backward(ctx, dy, [dstates])
    return dx, dstates0, grads


# The entries the functions' docstrings share, filled in by `filled(_DOCS)`
_DOCS = {
    'x': 'x : array_like, (T, B, I)\n        The input sequence, float32 or float64; every other array takes its dtype.',
    'biases': 'bias_ih, bias_hh : array_like, optional\n        The biases, both or neither (None: no bias).',
    'lengths': 'lengths : array_like of int, (B,), optional\n        Each sequence\'s length, 1 <= lengths[b] <= T: later steps give y = 0 and\n'
               '        leave the state alone.',
    'reverse': 'reverse : bool, default False\n        Run from the last step (each sequence\'s own last, with lengths) to the first.',
    'training': 'training : bool, default False\n        Keep a context for the backward; False returns None in its place.',
    'check_finite': 'check_finite : bool, default True\n        Whether to refuse NaN and infinity in x, the states and the weights.',
    'backend': 'backend : str, optional\n        "cython", "numba" or "numpy"; None follows `rnncore.set_backend`.',
    'ctx_out': 'ctx : context or None\n        What the backward needs (training=True), else None.',
    'forward_raises': 'Raises\n    ------\n    ValueError, TypeError\n        A wrong shape, dtype, option, length or non-finite value, naming the\n'
                      '        argument, before any compute.',
    'ctx': 'ctx : context\n        The context a training-mode forward returned.',
    'dy': 'dy : array_like, the shape of that forward\'s y\n        The gradient of the loss with respect to y, of the forward\'s dtype.',
    'grads': 'grads : dict of str to np.ndarray\n        The parameter gradients, keyed by the forward\'s argument names (bias_ih and\n'
             '        bias_hh get the same values where the kernels sum them).',
    'backward_raises': 'Raises\n    ------\n    TypeError\n        ctx is not a training-mode context, or a dtype differs from the forward\'s.\n'
                       '    ValueError\n        A wrong shape.',
}


@filled(_DOCS)
def rnn_forward(x: ArrayLike, h0: Optional[ArrayLike], weight_ih: ArrayLike, weight_hh: ArrayLike,
                bias_ih: Optional[ArrayLike] = None, bias_hh: Optional[ArrayLike] = None, *,
                nonlinearity: str = "tanh", lengths: Optional[ArrayLike] = None, reverse: bool = False,
                training: bool = False, check_finite: bool = True, backend: Optional[str] = None,
                ) -> tuple[np.ndarray, np.ndarray, Optional[_Context]]:
    """Elman RNN over a sequence: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    Parameters
    ----------
    %(x)s
    h0 : array_like, (B, H), optional
        The initial state; zeros when None.
    weight_ih : array_like, (H, I)
    weight_hh : array_like, (H, H)
    %(biases)s
    nonlinearity : {"tanh", "relu"}, default "tanh"
    %(lengths)s
    %(reverse)s
    %(training)s
    %(check_finite)s
    %(backend)s

    Returns
    -------
    y : np.ndarray, (T, B, H)
    h_n : np.ndarray, (B, H)
        Each sequence's state after its last step.
    %(ctx_out)s

    %(forward_raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((5, 2, 3))
    >>> w_ih, w_hh = rng.standard_normal((4, 3)), rng.standard_normal((4, 4))
    >>> y, h_n, ctx = rc.functional.rnn_forward(x, None, w_ih, w_hh, training=True)
    >>> y.shape, h_n.shape
    ((5, 2, 4), (2, 4))
    >>> dx, dh0, grads = rc.functional.rnn_backward(ctx, np.ones_like(y))
    >>> dx.shape, sorted(grads)
    ((5, 2, 3), ['weight_hh', 'weight_ih'])
    """
    validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
    spec = CellSpec("rnn", validate.matrix_shape("weight_ih", weight_ih)[1],
                    validate.matrix_shape("weight_hh", weight_hh)[0], validate.bias_pair(bias_ih, bias_hh),
                    nonlinearity=nonlinearity)
    params = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
    y, (h_n,), ctx = _forward(spec, params, x, (h0,), lengths, reverse, training, check_finite, backend, ("h0",))
    return y, h_n, ctx


@filled(_DOCS)
def rnn_backward(ctx: _Context, dy: ArrayLike, dh_n: Optional[ArrayLike] = None,
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Back-propagate through an `rnn_forward` or `gru_forward` (``gru_backward`` is
    this function).

    Parameters
    ----------
    %(ctx)s
    %(dy)s
    dh_n : array_like, (B, H), optional
        The gradient with respect to h_n; zeros when None.

    Returns
    -------
    dx : np.ndarray, (T, B, I)
    dh0 : np.ndarray, (B, H)
    %(grads)s

    %(backward_raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rng = np.random.default_rng(0)
    >>> x, w_ih, w_hh = rng.standard_normal((5, 2, 3)), rng.standard_normal((12, 3)), rng.standard_normal((12, 4))
    >>> y, h_n, ctx = rc.functional.gru_forward(x, None, w_ih, w_hh, training=True)
    >>> dx, dh0, grads = rc.functional.gru_backward(ctx, np.ones_like(y), dh_n=np.ones_like(h_n))
    >>> dx.shape, dh0.shape, grads["weight_hh"].shape
    ((5, 2, 3), (2, 4), (12, 4))
    """
    dx, (dh0,), grads = _backward(ctx, dy, (dh_n,), ("dh_n",))
    return dx, dh0, grads


@filled(_DOCS)
def gru_forward(x: ArrayLike, h0: Optional[ArrayLike], weight_ih: ArrayLike, weight_hh: ArrayLike,
                bias_ih: Optional[ArrayLike] = None, bias_hh: Optional[ArrayLike] = None, *,
                reset_after: bool = True, lengths: Optional[ArrayLike] = None, reverse: bool = False,
                training: bool = False, check_finite: bool = True, backend: Optional[str] = None,
                ) -> tuple[np.ndarray, np.ndarray, Optional[_Context]]:
    """GRU over a sequence, gates r, z, n (PyTorch's order in the weights' rows).

    reset_after=True: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) (PyTorch, cuDNN);
    False: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn) (Cho et al.).

    Parameters
    ----------
    %(x)s
    h0 : array_like, (B, H), optional
        The initial state; zeros when None.
    weight_ih : array_like, (3H, I)
    weight_hh : array_like, (3H, H)
    %(biases)s
    reset_after : bool, default True
    %(lengths)s
    %(reverse)s
    %(training)s
    %(check_finite)s
    %(backend)s

    Returns
    -------
    y : np.ndarray, (T, B, H)
    h_n : np.ndarray, (B, H)
        Each sequence's state after its last step.
    %(ctx_out)s

    %(forward_raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rng = np.random.default_rng(0)
    >>> x, w_ih, w_hh = rng.standard_normal((5, 2, 3)), rng.standard_normal((12, 3)), rng.standard_normal((12, 4))
    >>> y, h_n, _ = rc.functional.gru_forward(x, None, w_ih, w_hh, lengths=[5, 2])
    >>> bool(np.all(y[2:, 1] == 0)), bool(np.array_equal(h_n[1], y[1, 1]))
    (True, True)
    """
    rows, columns = validate.matrix_shape("weight_ih", weight_ih)
    spec = CellSpec("gru", columns, rows // 3, validate.bias_pair(bias_ih, bias_hh),
                    reset_after=validate.flag("reset_after", reset_after))
    params = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
    y, (h_n,), ctx = _forward(spec, params, x, (h0,), lengths, reverse, training, check_finite, backend, ("h0",))
    return y, h_n, ctx


gru_backward = rnn_backward


@filled(_DOCS)
def lstm_forward(x: ArrayLike, h0: Optional[ArrayLike], c0: Optional[ArrayLike], weight_ih: ArrayLike,
                 weight_hh: ArrayLike, bias_ih: Optional[ArrayLike] = None, bias_hh: Optional[ArrayLike] = None,
                 *, weight_hr: Optional[ArrayLike] = None, weight_ci: Optional[ArrayLike] = None,
                 weight_cf: Optional[ArrayLike] = None, weight_co: Optional[ArrayLike] = None,
                 coupled_input_forget: bool = False, lengths: Optional[ArrayLike] = None, reverse: bool = False,
                 training: bool = False, check_finite: bool = True, backend: Optional[str] = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Optional[_Context]]:
    """LSTM over a sequence, gates i, f, g, o (i, g, o when coupled), PyTorch's order
    in the weights' rows. Peepholes are on when weight_ci is given, the projection
    (h = W_hr m, P units) when weight_hr is given.

    Parameters
    ----------
    %(x)s
    h0 : array_like, (B, P or H), optional
        The initial hidden state; zeros when None.
    c0 : array_like, (B, H), optional
        The initial cell state; zeros when None.
    weight_ih : array_like, (G*H, I), G = 4 (3 when coupled)
    weight_hh : array_like, (G*H, P or H)
    %(biases)s
    weight_hr : array_like, (P, H), optional
        The projection.
    weight_ci, weight_cf, weight_co : array_like, (H,), optional
        The peepholes: all three, or weight_ci and weight_co when coupled.
    coupled_input_forget : bool, default False
        f = 1 - i (CIFG); the weights then have 3H rows.
    %(lengths)s
    %(reverse)s
    %(training)s
    %(check_finite)s
    %(backend)s

    Returns
    -------
    y : np.ndarray, (T, B, P or H)
    h_n : np.ndarray, (B, P or H)
    c_n : np.ndarray, (B, H)
        Each sequence's states after its last step.
    %(ctx_out)s

    %(forward_raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rng = np.random.default_rng(0)
    >>> x, w_ih, w_hh = rng.standard_normal((5, 2, 3)), rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    >>> w_hr = rng.standard_normal((2, 4))
    >>> y, h_n, c_n, ctx = rc.functional.lstm_forward(x, None, None, w_ih, w_hh, weight_hr=w_hr, training=True)
    >>> y.shape, h_n.shape, c_n.shape
    ((5, 2, 2), (2, 2), (2, 4))
    """
    coupled_input_forget = validate.flag("coupled_input_forget", coupled_input_forget)
    gates = 3 if coupled_input_forget else 4
    rows, columns = validate.matrix_shape("weight_ih", weight_ih)
    spec = CellSpec("lstm", columns, rows // gates, validate.bias_pair(bias_ih, bias_hh),
                    proj_size=0 if weight_hr is None else validate.matrix_shape("weight_hr", weight_hr)[0],
                    peephole=weight_ci is not None, coupled_input_forget=coupled_input_forget)
    params = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh, weight_hr=weight_hr,
                  weight_ci=weight_ci, weight_cf=weight_cf, weight_co=weight_co)
    y, (h_n, c_n), ctx = _forward(spec, params, x, (h0, c0), lengths, reverse, training, check_finite,
                                  backend, ("h0", "c0"))
    return y, h_n, c_n, ctx


@filled(_DOCS)
def lstm_backward(ctx: _Context, dy: ArrayLike, dh_n: Optional[ArrayLike] = None, dc_n: Optional[ArrayLike] = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Back-propagate through an `lstm_forward`.

    Parameters
    ----------
    %(ctx)s
    %(dy)s
    dh_n : array_like, (B, P or H), optional
        The gradient with respect to h_n; zeros when None.
    dc_n : array_like, (B, H), optional
        The gradient with respect to c_n; zeros when None.

    Returns
    -------
    dx : np.ndarray, (T, B, I)
    dh0 : np.ndarray, (B, P or H)
    dc0 : np.ndarray, (B, H)
    %(grads)s

    %(backward_raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rng = np.random.default_rng(0)
    >>> x, w_ih, w_hh = rng.standard_normal((5, 2, 3)), rng.standard_normal((16, 3)), rng.standard_normal((16, 4))
    >>> y, h_n, c_n, ctx = rc.functional.lstm_forward(x, None, None, w_ih, w_hh, training=True)
    >>> dx, dh0, dc0, grads = rc.functional.lstm_backward(ctx, np.ones_like(y))
    >>> dx.shape, dc0.shape, grads["weight_ih"].shape
    ((5, 2, 3), (2, 4), (16, 3))
    """
    dx, (dh0, dc0), grads = _backward(ctx, dy, (dh_n, dc_n), ("dh_n", "dc_n"))
    return dx, dh0, dc0, grads


@filled(_DOCS)
def jordan_forward(x: ArrayLike, y0: Optional[ArrayLike], weight_ih: ArrayLike, weight_hh: ArrayLike,
                   weight_ho: ArrayLike, bias_ih: Optional[ArrayLike] = None, bias_hh: Optional[ArrayLike] = None,
                   bias_ho: Optional[ArrayLike] = None, *, nonlinearity: str = "tanh",
                   output_activation: str = "identity", lengths: Optional[ArrayLike] = None, reverse: bool = False,
                   training: bool = False, check_finite: bool = True, backend: Optional[str] = None,
                   ) -> tuple[np.ndarray, np.ndarray, Optional[_Context]]:
    """Jordan RNN over a sequence: the output, not the hidden state, is fed back.
    h_t = act(W_ih x_t + b_ih + W_hh y_{t-1} + b_hh), y_t = out_act(W_ho h_t + b_ho).

    Parameters
    ----------
    %(x)s
    y0 : array_like, (B, O), optional
        The initial fed-back output; zeros when None.
    weight_ih : array_like, (H, I)
    weight_hh : array_like, (H, O)
    weight_ho : array_like, (O, H)
    %(biases)s
    bias_ho : array_like, (O,), optional
        Given exactly when bias_ih and bias_hh are.
    nonlinearity : {"tanh", "relu"}, default "tanh"
    output_activation : {"identity", "tanh", "sigmoid"}, default "identity"
    %(lengths)s
    %(reverse)s
    %(training)s
    %(check_finite)s
    %(backend)s

    Returns
    -------
    y : np.ndarray, (T, B, O)
    y_n : np.ndarray, (B, O)
        Each sequence's output at its last step.
    %(ctx_out)s

    %(forward_raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((5, 2, 3))
    >>> w_ih, w_hh, w_ho = rng.standard_normal((4, 3)), rng.standard_normal((4, 1)), rng.standard_normal((1, 4))
    >>> y, y_n, _ = rc.functional.jordan_forward(x, None, w_ih, w_hh, w_ho, output_activation="sigmoid")
    >>> y.shape, bool(np.all((0 < y) & (y < 1)))
    ((5, 2, 1), True)
    """
    validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
    validate.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
    bias = validate.bias_pair(bias_ih, bias_hh)
    if bias != (bias_ho is not None):
        raise ValueError("bias_ho: expected it exactly when bias_ih and bias_hh are given")
    hidden_size, input_size = validate.matrix_shape("weight_ih", weight_ih)
    spec = CellSpec("jordan", input_size, hidden_size, bias, nonlinearity=nonlinearity,
                    output_size=validate.matrix_shape("weight_ho", weight_ho)[0], output_activation=output_activation)
    params = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh, weight_ho=weight_ho,
                  bias_ho=bias_ho)
    y, (y_n,), ctx = _forward(spec, params, x, (y0,), lengths, reverse, training, check_finite, backend, ("y0",))
    return y, y_n, ctx


@filled(_DOCS)
def jordan_backward(ctx: _Context, dy: ArrayLike, dy_n: Optional[ArrayLike] = None,
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Back-propagate through a `jordan_forward`.

    Parameters
    ----------
    %(ctx)s
    %(dy)s
    dy_n : array_like, (B, O), optional
        The gradient with respect to y_n; zeros when None.

    Returns
    -------
    dx : np.ndarray, (T, B, I)
    dy0 : np.ndarray, (B, O)
    %(grads)s

    %(backward_raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((5, 2, 3))
    >>> w_ih, w_hh, w_ho = rng.standard_normal((4, 3)), rng.standard_normal((4, 1)), rng.standard_normal((1, 4))
    >>> y, y_n, ctx = rc.functional.jordan_forward(x, None, w_ih, w_hh, w_ho, training=True)
    >>> dx, dy0, grads = rc.functional.jordan_backward(ctx, np.ones_like(y))
    >>> dy0.shape, grads["weight_ho"].shape
    ((2, 1), (1, 4))
    """
    dx, (dy0,), grads = _backward(ctx, dy, (dy_n,), ("dy_n",))
    return dx, dy0, grads
