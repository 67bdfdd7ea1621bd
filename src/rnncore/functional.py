"""Stateless forward and backward of every cell type over a sequence: arrays in,
arrays out, no objects, for embedding in other numeric code.

Shapes are time-major: x (T, B, I), states (B, n). `*_forward(..., training=True)`
returns a context as its last value; the matching `*_backward(ctx, dy, ...)` takes it
and returns the input gradient, the initial-state gradient and a dict of parameter
gradients keyed by the parameter names of the forward call. With training=False the
context is None and nothing is kept.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from numpy.typing import ArrayLike

from . import _backend, _validate
from ._spec import ACTIVATIONS, OUTPUT_ACTIVATIONS, CellSpec

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
           "jordan_forward", "jordan_backward"]


class _Context:
    """What a training-mode forward keeps for its backward. Opaque to users."""
    __slots__ = ("backend", "inner", "spec", "shape", "dtype")

    def __init__(self, backend, inner, spec, shape, dtype):
        self.backend, self.inner, self.spec, self.shape, self.dtype = backend, inner, spec, shape, dtype


def _forward(spec, params, x, states, lengths, reverse, training, check_finite, backend):
    """Validate everything against `spec`, then run one direction."""
    reverse, training, check_finite = (_validate.flag(name, value) for name, value in
                                       (("reverse", reverse), ("training", training), ("check_finite", check_finite)))
    x = _validate.to_numpy(x, "x")
    dtype = _validate.float_dtype(x.dtype, "x")
    if x.ndim != 3 or x.shape[2] != spec.input_size or 0 in x.shape:
        raise ValueError(f"x: expected shape (T, B, {spec.input_size}) with T, B >= 1, got {x.shape}")
    T, B, _ = x.shape
    # every size is read from a weight's shape: a size 0 shows as an empty axis there
    shapes = {name: _validate.to_numpy(value).shape for name, value in params.items() if value is not None}
    empty = [name for name, shape in shapes.items() if 0 in shape]
    if empty:
        raise ValueError(f"{empty[0]}: expected every size (hidden_size, proj_size, output_size) >= 1, got shape "
                         f"{shapes[empty[0]]}")
    if spec.hidden_size < 1:
        raise ValueError(f"weight_ih: expected {spec.num_gates} * hidden_size rows, hidden_size >= 1, got shape "
                         f"{shapes['weight_ih']}")
    unused = [name for name, value in params.items() if value is not None and name not in spec.param_shapes()]
    if unused:
        raise ValueError(f"{', '.join(unused)}: expected None for this variant, got an array")
    arrays = {}
    for name, shape in spec.param_shapes().items():
        value = params.get(name)
        if value is None:
            raise ValueError(f"{name}: expected an array of shape {shape}, got None")
        arr = _validate.array(name, value, dtype, source="x's dtype")
        _validate.shape(name, arr, shape)
        arrays[name] = np.ascontiguousarray(arr)
    state_arrays = _validate.states([v for _, v in states], [n for n, _ in states], spec.state_sizes, dtype, (B,),
                                    check_finite, source="x's dtype")
    state_arrays = [np.ascontiguousarray(s) for s in state_arrays]
    if lengths is not None:
        lengths = _validate.lengths(lengths, B, T)
    if check_finite:
        for name, arr in [("x", x)] + list(arrays.items()):
            _validate.finite(name, arr)
    module = _backend.resolve(backend)
    y, (state_n,), inner = module.layer_forward(spec, [arrays], _validate.kernel_input(x, training), [tuple(state_arrays)],
                                               lengths, training, (bool(reverse),))
    ctx = _Context(module, inner, spec, (T, B), dtype) if training else None
    return y, state_n, ctx


def _backward(ctx, dy, dstates_n, names):
    if not isinstance(ctx, _Context):
        raise TypeError(f"ctx: expected the context of a training-mode forward, got {type(ctx).__name__}")
    T, B = ctx.shape
    dy = _validate.array("dy", dy, ctx.dtype, source="the forward's dtype")
    _validate.shape("dy", dy, (T, B, ctx.spec.out_size))
    arrays = [np.ascontiguousarray(a) for a in
              _validate.states(dstates_n, names, ctx.spec.state_sizes, ctx.dtype, (B,), check_finite=False,
                               source="the forward's dtype")]
    dx, (dstate0,), (grads,) = ctx.backend.layer_backward(ctx.inner, np.ascontiguousarray(dy), [tuple(arrays)])
    return dx, dstate0, grads


def _matrix_shape(name, value):
    """The shape of a 2-d weight, from which the cell's sizes are read before the weight
    itself is checked against them."""
    shape = np.shape(_validate.to_numpy(value, name))
    if len(shape) != 2:
        raise ValueError(f"{name}: expected a 2-d array, got {type(value).__name__} of shape {shape}")
    return shape


def _biases(bias_ih, bias_hh):
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih, bias_hh: expected both or neither, got one")
    return bias_ih is not None


def rnn_forward(x: ArrayLike, h0: Optional[ArrayLike], weight_ih: ArrayLike, weight_hh: ArrayLike,
                bias_ih: Optional[ArrayLike] = None, bias_hh: Optional[ArrayLike] = None, *,
                nonlinearity: str = "tanh", lengths: Optional[ArrayLike] = None, reverse: bool = False,
                training: bool = False, check_finite: bool = True, backend: Optional[str] = None,
                ) -> tuple[np.ndarray, np.ndarray, Optional[_Context]]:
    """Elman RNN over a sequence. Returns y (T, B, H), h_n (B, H), ctx."""
    _validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
    spec = CellSpec("rnn", _matrix_shape("weight_ih", weight_ih)[1], _matrix_shape("weight_hh", weight_hh)[0],
                    _biases(bias_ih, bias_hh), nonlinearity=nonlinearity)
    params = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
    y, (h_n,), ctx = _forward(spec, params, x, [("h0", h0)], lengths, reverse, training, check_finite, backend)
    return y, h_n, ctx


def rnn_backward(ctx: _Context, dy: ArrayLike, dh_n: Optional[ArrayLike] = None,
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Returns dx (T, B, I), dh0 (B, H), grads."""
    dx, (dh0,), grads = _backward(ctx, dy, (dh_n,), ("dh_n",))
    return dx, dh0, grads


def gru_forward(x: ArrayLike, h0: Optional[ArrayLike], weight_ih: ArrayLike, weight_hh: ArrayLike,
                bias_ih: Optional[ArrayLike] = None, bias_hh: Optional[ArrayLike] = None, *,
                reset_after: bool = True, lengths: Optional[ArrayLike] = None, reverse: bool = False,
                training: bool = False, check_finite: bool = True, backend: Optional[str] = None,
                ) -> tuple[np.ndarray, np.ndarray, Optional[_Context]]:
    """GRU over a sequence (gates r, z, n). Returns y (T, B, H), h_n (B, H), ctx."""
    rows, columns = _matrix_shape("weight_ih", weight_ih)
    spec = CellSpec("gru", columns, rows // 3, _biases(bias_ih, bias_hh),
                    reset_after=_validate.flag("reset_after", reset_after))
    params = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
    y, (h_n,), ctx = _forward(spec, params, x, [("h0", h0)], lengths, reverse, training, check_finite, backend)
    return y, h_n, ctx


gru_backward = rnn_backward


def lstm_forward(x: ArrayLike, h0: Optional[ArrayLike], c0: Optional[ArrayLike], weight_ih: ArrayLike,
                 weight_hh: ArrayLike, bias_ih: Optional[ArrayLike] = None, bias_hh: Optional[ArrayLike] = None,
                 *, weight_hr: Optional[ArrayLike] = None, weight_ci: Optional[ArrayLike] = None,
                 weight_cf: Optional[ArrayLike] = None, weight_co: Optional[ArrayLike] = None,
                 coupled_input_forget: bool = False, lengths: Optional[ArrayLike] = None, reverse: bool = False,
                 training: bool = False, check_finite: bool = True, backend: Optional[str] = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Optional[_Context]]:
    """LSTM over a sequence (gates i, f, g, o; i, g, o when coupled). Peepholes are on
    when weight_ci is given, the projection when weight_hr is given.
    Returns y (T, B, P or H), h_n (B, P or H), c_n (B, H), ctx."""
    coupled_input_forget = _validate.flag("coupled_input_forget", coupled_input_forget)
    gates = 3 if coupled_input_forget else 4
    rows, columns = _matrix_shape("weight_ih", weight_ih)
    spec = CellSpec("lstm", columns, rows // gates, _biases(bias_ih, bias_hh),
                    proj_size=0 if weight_hr is None else _matrix_shape("weight_hr", weight_hr)[0],
                    peephole=weight_ci is not None, coupled_input_forget=coupled_input_forget)
    params = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh, weight_hr=weight_hr,
                  weight_ci=weight_ci, weight_cf=weight_cf, weight_co=weight_co)
    y, (h_n, c_n), ctx = _forward(spec, params, x, [("h0", h0), ("c0", c0)], lengths, reverse, training,
                                  check_finite, backend)
    return y, h_n, c_n, ctx


def lstm_backward(ctx: _Context, dy: ArrayLike, dh_n: Optional[ArrayLike] = None, dc_n: Optional[ArrayLike] = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Returns dx, dh0, dc0, grads."""
    dx, (dh0, dc0), grads = _backward(ctx, dy, (dh_n, dc_n), ("dh_n", "dc_n"))
    return dx, dh0, dc0, grads


def jordan_forward(x: ArrayLike, y0: Optional[ArrayLike], weight_ih: ArrayLike, weight_hh: ArrayLike,
                   weight_ho: ArrayLike, bias_ih: Optional[ArrayLike] = None, bias_hh: Optional[ArrayLike] = None,
                   bias_ho: Optional[ArrayLike] = None, *, nonlinearity: str = "tanh",
                   output_activation: str = "identity", lengths: Optional[ArrayLike] = None, reverse: bool = False,
                   training: bool = False, check_finite: bool = True, backend: Optional[str] = None,
                   ) -> tuple[np.ndarray, np.ndarray, Optional[_Context]]:
    """Jordan RNN over a sequence. Returns y (T, B, O), y_n (B, O), ctx."""
    _validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
    _validate.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
    bias = _biases(bias_ih, bias_hh)
    if bias != (bias_ho is not None):
        raise ValueError("bias_ho: expected it exactly when bias_ih and bias_hh are given")
    hidden_size, input_size = _matrix_shape("weight_ih", weight_ih)
    spec = CellSpec("jordan", input_size, hidden_size, bias, nonlinearity=nonlinearity,
                    output_size=_matrix_shape("weight_ho", weight_ho)[0], output_activation=output_activation)
    params = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh, weight_ho=weight_ho,
                  bias_ho=bias_ho)
    y, (y_n,), ctx = _forward(spec, params, x, [("y0", y0)], lengths, reverse, training, check_finite, backend)
    return y, y_n, ctx


def jordan_backward(ctx: _Context, dy: ArrayLike, dy_n: Optional[ArrayLike] = None,
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Returns dx, dy0, grads."""
    dx, (dy0,), grads = _backward(ctx, dy, (dy_n,), ("dy_n",))
    return dx, dy0, grads
