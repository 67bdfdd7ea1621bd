"""Single-step cells with PyTorch's semantics and names: a sequence of length one run
through the same backend kernels as the layers."""
from __future__ import annotations

from typing import Optional

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _backend, _validate
from ._spec import ACTIVATIONS, CellSpec
from .layers import _Parametrised, _pair, commit, saved_context

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]


class _Cell(_Parametrised):
    _state_names: tuple[str, ...] = ("h0",)

    def __init__(self, kind, input_size, hidden_size, bias, dtype, seed, backend, **variant):
        self.input_size = _validate.positive_int("input_size", input_size)
        self.hidden_size = _validate.positive_int("hidden_size", hidden_size)
        self.dtype = _validate.float_dtype(dtype)
        if backend is not None:
            _backend._check_name(backend)
        self._backend_name = backend
        self.bias = _validate.flag("bias", bias)
        self.spec = CellSpec(kind, self.input_size, self.hidden_size, self.bias, **variant)
        self._init_params(self.spec.param_shapes(), self.hidden_size, seed)

    def _step(self, x, states, check_finite):
        check_finite = _validate.flag("check_finite", check_finite)
        x = _validate.array("x", x, self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected shape (B, {self.input_size}) or ({self.input_size},), got {x.shape}")
        batched = x.ndim == 2
        x = x if batched else x[None]
        B = x.shape[0]
        if B < 1:
            raise ValueError(f"x: expected at least one row, got shape {x.shape}")
        if check_finite:
            _validate.finite("x", x)
        states = self._check_states(states, self._state_names, B, batched, check_finite)
        backend = self._backend()
        _, (states_n,), ctx = backend.layer_forward(self.spec, [self._params], _validate.kernel_input(x[None], self.training),
                                                     [states], None, self.training, (False,))
        self._saved = dict(backend=backend, ctx=ctx, batched=batched, B=B) if self.training else None
        return tuple(s if batched else s[0] for s in states_n)

    def _check_states(self, given, names, B, batched, check_finite):
        lead = (B,) if batched else ()
        out = _validate.states(given, names, self.spec.state_sizes, self.dtype, lead, check_finite)
        return tuple(np.ascontiguousarray(s if batched else s[None]) for s in out)

    def _step_back(self, dstates):
        saved = saved_context(self, "backward: there is no training-mode call to back-propagate through "
                                    "(call the cell in train() mode first)")
        names = tuple("d" + n.replace("0", "1") for n in self._state_names)
        dstates = self._check_states(dstates, names, saved["B"], saved["batched"], check_finite=True)
        dy = np.zeros((1, saved["B"], self.spec.out_size), dtype=self.dtype)
        dx, (dstates0,), (grads,) = saved["backend"].layer_backward(saved["ctx"], dy, [dstates])
        commit([(self, saved, grads)])
        if saved["batched"]:
            return dx[0], dstates0
        return dx[0, 0], tuple(d[0] for d in dstates0)


class _OneStateCell(_Cell):
    """Calling and backward of the cells whose state is h alone (RNNCell, GRUCell)."""

    def __call__(self, x: ArrayLike, h0: Optional[ArrayLike] = None, check_finite: bool = True) -> np.ndarray:
        """h1 = cell(x, h0=None)"""
        (h1,) = self._step(x, (h0,), check_finite)
        return h1

    forward = __call__

    def backward(self, dh1: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """dx, dh0 = cell.backward(dh1)"""
        dx, (dh0,) = self._step_back((dh1,))
        return dx, dh0


class RNNCell(_OneStateCell):
    """h1 = cell(x, h0): h1 = act(W_ih x + b_ih + W_hh h0 + b_hh). The argument order is
    API.md's (nonlinearity third); `bias` must be a bool, so PyTorch's positional order
    (bias third) fails loudly instead of building the wrong cell."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, backend: Optional[str] = None) -> None:
        _validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
        super().__init__("rnn", input_size, hidden_size, bias, dtype, seed, backend, nonlinearity=nonlinearity)
        self.nonlinearity = nonlinearity


class GRUCell(_OneStateCell):
    """h1 = cell(x, h0), gates r, z, n (reset_after selects the form, as in GRU)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, backend: Optional[str] = None) -> None:
        reset_after = _validate.flag("reset_after", reset_after)
        super().__init__("gru", input_size, hidden_size, bias, dtype, seed, backend, reset_after=reset_after)
        self.reset_after = reset_after


class LSTMCell(_Cell):
    """(h1, c1) = cell(x, (h0, c0)), gates i, f, g, o; peephole and coupled_input_forget
    as in LSTM."""

    _state_names = ("h0", "c0")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, peephole: bool = False,
                 coupled_input_forget: bool = False, dtype: DTypeLike = np.float32, seed: Optional[int] = None,
                 backend: Optional[str] = None) -> None:
        super().__init__("lstm", input_size, hidden_size, bias, dtype, seed, backend,
                         peephole=_validate.flag("peephole", peephole),
                         coupled_input_forget=_validate.flag("coupled_input_forget", coupled_input_forget))
        self.peephole = bool(peephole)
        self.coupled_input_forget = bool(coupled_input_forget)

    def __call__(self, x: ArrayLike, hx: Optional[tuple[Optional[ArrayLike], Optional[ArrayLike]]] = None,
                 check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
        h1, c1 = self._step(x, _pair("hx", hx), check_finite)
        return h1, c1

    forward = __call__

    def backward(self, dhx1: tuple[ArrayLike, ArrayLike]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """dx, (dh0, dc0) = cell.backward((dh1, dc1))"""
        dx, (dh0, dc0) = self._step_back(_pair("dhx1", dhx1))
        return dx, (dh0, dc0)
