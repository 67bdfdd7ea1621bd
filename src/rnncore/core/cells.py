"""Single-step cells with PyTorch's semantics and names: a sequence of length one run
through the same door to the backends as the layers (`functional.run_layer`), checked by
the same `validate.sequence_call`."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import functional, regularise, validate
from .docs import PARAMETER_DOCS, filled
from .module import Module, commit, register, saved_context
from .spec import ACTIVATIONS, CellSpec

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]


# The entries the cells' docstrings share: the layers' ones, where a cell differs
# (parameter names without a layer suffix, no dropout) its own
_CELL_DOCS = dict(
    PARAMETER_DOCS,
    bias='bias : bool, default True\n        Whether the cell has the biases `bias_ih`, `bias_hh`.',
    seed='seed : int, optional\n        Seeds the initialisation, U(-1/sqrt(H), 1/sqrt(H)).',
    call_raises='Raises\n        ------\n        ValueError, TypeError\n            A wrong shape, dtype or non-finite value, before any compute.',
    backward_raises='Raises\n        ------\n        RuntimeError\n            No training-mode call, or its context was already consumed by a backward.\n'
                    '        ValueError, TypeError\n            A wrong shape, dtype or non-finite gradient; nothing changes.',
    check_finite='check_finite : bool, default True\n            Whether to refuse NaN and infinity in x and the states.',
)


class _Cell(Module):
    _state_names: tuple[str, ...] = ("h0",)

    def __init__(self, kind, input_size, hidden_size, bias, dtype, seed, backend, **variant):
        self.input_size = validate.positive_int("input_size", input_size)
        self.hidden_size = validate.positive_int("hidden_size", hidden_size)
        self.dtype = validate.float_dtype(dtype)
        if backend is not None:
            functional.check_backend(backend)
        self._backend_name = backend
        self.bias = validate.flag("bias", bias)
        self.spec = spec = CellSpec(kind, self.input_size, self.hidden_size, self.bias, **variant)
        self._init_params(spec.param_shapes(), self.hidden_size, seed,
                          {name: spec.initial_value(name) for name in spec.param_shapes()
                           if spec.initial_value(name) is not None})
        # the regularised options as the constructor took them (get_config reads them)
        self.layer_norm, self.zoneout = spec.layer_norm, regularise.config_zoneout(spec)
        self.recurrent_dropout, self.weight_dropout = spec.recurrent_dropout, spec.weight_dropout

    def _call_form(self):
        grad_names = tuple("d" + n.replace("0", "1") for n in self._state_names)
        return validate.SequenceForm(self.spec, validate.STEP, self._state_names, grad_names, unbatched=True,
                                     dtype=self.dtype, source="the cell's dtype")

    def _step(self, x, states, check_finite):
        x, states, _, batched, _ = validate.sequence_call(self._form, x, states, None, check_finite, self.training)
        params, masks, dropped = [self._params], None, [None]
        if self.training and regularise.random(self.spec):
            # a cell's call is a sequence of one step: its masks are drawn per call
            masks, dropped = regularise.draw(self._rng, self.spec, 1, x.shape[1], self.dtype, 1)
            params = regularise.dropped_weights(params, dropped)
        _, (states_n,), ctx = functional.run_layer(self.spec, params, x, [states], None, self.training,
                                                   (False,), self._backend_name, masks)
        self._saved = dict(ctx=ctx, batched=batched, B=x.shape[1], weight_masks=dropped) if self.training else None
        return tuple(s if batched else s[0] for s in states_n)

    def _step_back(self, dstates):
        saved = saved_context(self, "backward: there is no training-mode call to back-propagate through "
                                    "(call the cell in train() mode first)")
        dy, dstates = validate.sequence_grads(self._form, None, dstates, (1, saved["B"], self.spec.out_size),
                                              saved["batched"], check_finite=True)
        dx, (dstates0,), grads = functional.run_layer_backward(saved["ctx"], dy, [dstates])
        regularise.weight_gradients(grads, saved["weight_masks"])
        (grads,) = grads
        commit([(self, saved, grads)])
        if saved["batched"]:
            return dx[0], dstates0
        return dx[0, 0], tuple(d[0] for d in dstates0)


class _OneStateCell(_Cell):
    """Calling and backward of the cells whose state is h alone (RNNCell, GRUCell)."""

    @filled(_CELL_DOCS)
    def __call__(self, x: ArrayLike, h0: Optional[ArrayLike] = None, check_finite: bool = True) -> np.ndarray:
        """One step: ``h1 = cell(x, h0=None)``. In training mode the step is kept for
        one `backward`.

        Parameters
        ----------
        x : array_like, (B, I) or (I,) unbatched
            The input, of the cell's dtype.
        h0 : array_like, (B, H) or (H,), optional
            The state before the step; zeros when None.
        %(check_finite)s

        Returns
        -------
        h1 : np.ndarray, (B, H) or (H,)
            The state after the step.

        %(call_raises)s
        """
        (h1,) = self._step(x, (h0,), check_finite)
        return h1

    forward = __call__

    @filled(_CELL_DOCS)
    def backward(self, dh1: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Back-propagate through the last training-mode step, adding the parameter
        gradients into `grads`: ``dx, dh0 = cell.backward(dh1)``.

        Parameters
        ----------
        dh1 : array_like, the shape of h1
            The gradient of the loss with respect to h1.

        Returns
        -------
        dx : np.ndarray, the shape of x
        dh0 : np.ndarray, the shape of h1

        %(backward_raises)s
        """
        dx, (dh0,) = self._step_back((dh1,))
        return dx, dh0


@filled(_CELL_DOCS)
@register
class RNNCell(_OneStateCell):
    """Elman cell, one step: h1 = act(W_ih x + b_ih + W_hh h0 + b_hh), act tanh or relu.

    The argument order has nonlinearity third; `bias` must be a bool, so PyTorch's
    positional order (bias third) fails loudly instead of building the wrong cell.

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    nonlinearity : {"tanh", "relu"}, default "tanh"
    %(bias)s
    %(dtype)s
    %(seed)s
    %(backend)s
    %(zoneout)s
    %(recurrent_dropout)s
    %(weight_dropout)s

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> cell = rc.RNNCell(3, 4, nonlinearity="relu", seed=0)
    >>> h = None
    >>> for x in np.ones((6, 2, 3), dtype=np.float32):
    ...     h = cell(x, h)
    >>> h.shape, bool(np.all(h >= 0))
    ((2, 4), True)
    >>> dx, dh0 = cell.backward(np.ones_like(h))
    >>> dx.shape, dh0.shape
    ((2, 3), (2, 4))
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, backend: Optional[str] = None, *,
                 zoneout: float = 0.0, recurrent_dropout: float = 0.0, weight_dropout: float = 0.0) -> None:
        validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
        super().__init__("rnn", input_size, hidden_size, bias, dtype, seed, backend, nonlinearity=nonlinearity,
                         **regularise.options("rnn", False, zoneout, recurrent_dropout, weight_dropout))
        self.nonlinearity = nonlinearity


@filled(_CELL_DOCS)
@register
class GRUCell(_OneStateCell):
    """GRU cell, one step, gates r, z, n. reset_after=True:
    n = tanh(W_in x + b_in + r * (W_hn h0 + b_hn)) (PyTorch, cuDNN); False:
    n = tanh(W_in x + b_in + W_hn (r * h0) + b_hn) (Cho et al.); h1 = (1 - z) n + z h0.

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    %(bias)s
    reset_after : bool, default True
    %(dtype)s
    %(seed)s
    %(backend)s
    %(layer_norm)s
    %(zoneout)s
    %(recurrent_dropout)s
    %(weight_dropout)s

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> cell = rc.GRUCell(3, 4, dtype=np.float64, seed=0)
    >>> h1 = cell(np.ones(3))
    >>> h1.shape, h1.dtype
    ((4,), dtype('float64'))
    >>> dx, dh0 = cell.backward(np.ones(4))
    >>> dx.shape, sorted(cell.grads)[:2]
    ((3,), ['bias_hh', 'bias_ih'])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, backend: Optional[str] = None, *,
                 layer_norm: bool = False, zoneout: float = 0.0, recurrent_dropout: float = 0.0,
                 weight_dropout: float = 0.0) -> None:
        reset_after = validate.flag("reset_after", reset_after)
        super().__init__("gru", input_size, hidden_size, bias, dtype, seed, backend, reset_after=reset_after,
                         **regularise.options("gru", layer_norm, zoneout, recurrent_dropout, weight_dropout,
                                              reset_after))
        self.reset_after = reset_after


@filled(_CELL_DOCS)
@register
class LSTMCell(_Cell):
    """LSTM cell, one step: ``(h1, c1) = cell(x, (h0, c0))``, gates i, f, g, o.

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    %(bias)s
    peephole : bool, default False
        Whether the gates also read the cell state (weights `weight_ci`, `weight_cf`,
        `weight_co`).
    coupled_input_forget : bool, default False
        f = 1 - i (CIFG): three gates, no `weight_cf`.
    %(dtype)s
    %(seed)s
    %(backend)s
    %(layer_norm)s
    %(zoneout_lstm)s
    %(recurrent_dropout)s
    %(weight_dropout)s

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> cell = rc.LSTMCell(3, 4, peephole=True, seed=0)
    >>> h1, c1 = cell(np.ones((2, 3), dtype=np.float32))
    >>> h1.shape, c1.shape
    ((2, 4), (2, 4))
    >>> dx, (dh0, dc0) = cell.backward((np.ones_like(h1), np.zeros_like(c1)))
    >>> dx.shape, cell.grads["weight_ci"].shape
    ((2, 3), (4,))
    """

    _state_names = ("h0", "c0")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, peephole: bool = False,
                 coupled_input_forget: bool = False, dtype: DTypeLike = np.float32, seed: Optional[int] = None,
                 backend: Optional[str] = None, *, layer_norm: bool = False,
                 zoneout: Union[float, tuple[float, float]] = 0.0, recurrent_dropout: float = 0.0,
                 weight_dropout: float = 0.0) -> None:
        super().__init__("lstm", input_size, hidden_size, bias, dtype, seed, backend,
                         peephole=validate.flag("peephole", peephole),
                         coupled_input_forget=validate.flag("coupled_input_forget", coupled_input_forget),
                         **regularise.options("lstm", layer_norm, zoneout, recurrent_dropout, weight_dropout))
        self.peephole = bool(peephole)
        self.coupled_input_forget = bool(coupled_input_forget)

    @filled(_CELL_DOCS)
    def __call__(self, x: ArrayLike, hx: Optional[tuple[Optional[ArrayLike], Optional[ArrayLike]]] = None,
                 check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """One step: ``h1, c1 = cell(x, hx=None)``. In training mode the step is kept for
        one `backward`.

        Parameters
        ----------
        x : array_like, (B, I) or (I,) unbatched
            The input, of the cell's dtype.
        hx : (h0, c0), optional
            The states before the step, each (B, H) or (H,); zeros for None or for
            either one None.
        %(check_finite)s

        Returns
        -------
        h1, c1 : np.ndarray, (B, H) or (H,)
            The states after the step.

        %(call_raises)s
        """
        h1, c1 = self._step(x, validate.pair("hx", hx), check_finite)
        return h1, c1

    forward = __call__

    @filled(_CELL_DOCS)
    def backward(self, dhx1: tuple[ArrayLike, ArrayLike]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Back-propagate through the last training-mode step, adding the parameter
        gradients into `grads`: ``dx, (dh0, dc0) = cell.backward((dh1, dc1))``.

        Parameters
        ----------
        dhx1 : (dh1, dc1), each array_like of the shape of h1
            The gradients of the loss with respect to h1 and c1.

        Returns
        -------
        dx : np.ndarray, the shape of x
        (dh0, dc0) : tuple of np.ndarray, the shape of h1 each

        %(backward_raises)s
        """
        dx, (dh0, dc0) = self._step_back(validate.pair("dhx1", dhx1))
        return dx, (dh0, dc0)
