"""The layers: parameters, stacking, directions, dropout.

A layer owns PyTorch-named parameters and runs its stack one layer at a time through
`functional.run_layer` (one or two directions), feeding each layer's concatenated output
to the next. Everything a user can get wrong is checked once, before any compute, by
`validate.sequence_call`, the check the cells and rc.functional share; the backends
trust what they are given.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import functional, regularise, validate
from .docs import shared_docs
from .module import Module, _check_budget, commit, register, saved_context
from .spec import ACTIVATIONS, OUTPUT_ACTIVATIONS, CellSpec, layer_suffix
from .stream import Stream

__all__ = ["RNN", "LSTM", "GRU", "JordanRNN"]


def _param_name(base, layer, direction):
    return base + layer_suffix(layer, direction)


class _Recurrent(Module):
    """A stack of `num_layers` layers of one cell type, one or two directions each."""

    _state_names: tuple[str, ...] = ("h0",)

    def __init__(self, kind, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, seed=None, backend=None,
                 **variant):
        self.input_size = validate.positive_int("input_size", input_size)
        self.hidden_size = validate.positive_int("hidden_size", hidden_size)
        self.num_layers = validate.positive_int("num_layers", num_layers)
        self.dtype = validate.float_dtype(dtype)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout acts between layers; with num_layers=1 it does nothing", UserWarning,
                          stacklevel=3)
        if backend is not None:
            functional.check_backend(backend)
        self.bias = validate.flag("bias", bias)
        self.batch_first = validate.flag("batch_first", batch_first)
        self.dropout = float(dropout)
        self.bidirectional = validate.flag("bidirectional", bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self._backend_name = backend

        self.specs = []
        width = self.input_size
        planned = 0
        for _ in range(self.num_layers):
            spec = CellSpec(kind, width, self.hidden_size, self.bias, **variant)
            self.specs.append(spec)
            width = self.num_directions * spec.out_size
            # layer by layer, so that a huge num_layers stops within the budget's worth of specs
            planned += self.num_directions * sum(math.prod(shape) for shape in spec.param_shapes().values())
            _check_budget(planned, self.dtype, charge=False)
        self.output_width = width
        shapes = {_param_name(base, k, d): shape
                  for k, spec in enumerate(self.specs)
                  for d in range(self.num_directions)
                  for base, shape in spec.param_shapes().items()}
        constants = {_param_name(base, k, d): spec.initial_value(base)
                     for k, spec in enumerate(self.specs)
                     for d in range(self.num_directions)
                     for base in spec.param_shapes() if spec.initial_value(base) is not None}
        self._init_params(shapes, self.hidden_size, seed, constants)
        spec = self.specs[0]
        # the regularised options as the constructor took them (get_config reads them)
        self.layer_norm, self.zoneout = spec.layer_norm, regularise.config_zoneout(spec)
        self.recurrent_dropout, self.weight_dropout = spec.recurrent_dropout, spec.weight_dropout

    def _call_form(self):
        grad_names = tuple("d" + n.replace("0", "_n") for n in self._state_names)
        return validate.SequenceForm(
            self.specs[0], validate.BATCH_FIRST if self.batch_first else validate.TIME_MAJOR, self._state_names,
            grad_names, unbatched=True, rows=self.num_directions * self.num_layers, dtype=self.dtype,
            source="the layer's dtype")

    def _direction_names(self, layer):
        """[{base name: full name}] per direction of one layer of the stack, formatted
        once: a short call (one step of decoding) would spend microseconds on them, in
        its forward (`_direction_params`) and in its backward, which names every
        gradient it returns."""
        cache = self.__dict__.setdefault("_names_by_layer", {})
        if layer not in cache:
            cache[layer] = [{base: _param_name(base, layer, d) for base in self.specs[layer].param_shapes()}
                            for d in range(self.num_directions)]
        return cache[layer]

    def _direction_params(self, layer):
        """[{base name: live array}] per direction of one layer of the stack. Built once:
        the arrays are never replaced (loading copies into them)."""
        cache = self.__dict__.setdefault("_by_layer", {})
        if layer not in cache:
            cache[layer] = [{base: self._params[name] for base, name in names.items()}
                            for names in self._direction_names(layer)]
        return cache[layer]

    def _output(self, y, batched):
        if not batched:
            return y[:, 0, :]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y

    def stream(self, batch_size: Optional[int] = 1, backend: Optional[str] = None) -> Stream:
        """A `rnncore.Stream` over this layer: inference one step (or one chunk) per call,
        the state carried between calls, the weights copied and packed once, now.

        Parameters
        ----------
        batch_size : int or None, default 1
            The rows stepped together; None: one unbatched sequence, x_t of shape (I,).
        backend : str, optional
            The backend to step on; the layer's (or the current selection) when None.

        Returns
        -------
        Stream
            ``y_t = stream.step(x_t)``, ``y = stream(x_chunk)``, ``stream.state``,
            ``stream.reset(state=None, rows=None)``, ``stream.refresh()``.

        Raises
        ------
        ValueError
            A bidirectional layer (its reverse direction needs the whole sequence), or a
            batch_size that is not a positive integer.

        Examples
        --------
        >>> import numpy as np, rnncore as rc
        >>> gru = rc.GRU(4, 8, num_layers=2, seed=0)
        >>> stream = gru.stream(batch_size=None)
        >>> stream.step(np.ones(4, np.float32)).shape
        (8,)
        >>> stream.state.shape
        (2, 8)
        """
        return Stream(self, batch_size, backend)

    # -- forward and backward through the stack ----------------------------------------

    def _forward(self, x, states, lengths, check_finite, memory="full"):
        functional.check_memory(memory)
        x, states, lengths, batched, _ = validate.sequence_call(self._form, x, states, lengths, check_finite,
                                                                self.training)
        dropout_mask = self._dropout_mask if self.training and self.dropout > 0 else None
        y, finals, saved = self._stack_forward(x, states, lengths, self.training, dropout_mask,
                                               draw_masks=self.training, memory=memory)
        self._saved = dict(saved, batched=batched) if saved is not None else None
        finals = [f if batched else f[:, 0, :] for f in finals]
        return self._output(y, batched), finals

    def _stack_forward(self, x, states, lengths, keep_context, dropout_mask=None, draw_masks=False, memory="full"):
        """The stack over C-contiguous time-major x (T, B, I) and C-contiguous states
        [(D*L, B, n)], as `validate.sequence_call` returns them: y (T, B, W), the final
        states, and what `_stack_backward` needs (None unless keep_context).
        `dropout_mask(shape)`, when given, draws the inverted-dropout mask of each layer's
        output but the last; `draw_masks` draws the regularised cells' masks (training
        mode), else they take their deterministic form; `memory` is what each layer's
        context keeps (`contract.MEMORY`). It stores nothing on the layer, so calls may
        interleave."""
        T, B, _ = x.shape
        D = self.num_directions
        reverse = (False, True)[:D]
        finals = [np.empty_like(s) for s in states]
        contexts, masks, weight_masks = [], [], []
        layer_input = x
        for k, spec in enumerate(self.specs):
            rows = range(k * D, (k + 1) * D)
            states_k = [tuple(s[r] for s in states) for r in rows]
            params, cell_masks, dropped = self._direction_params(k), None, [None] * D
            if draw_masks and regularise.random(spec):
                cell_masks, dropped = regularise.draw(self._rng, spec, T, B, self.dtype, D)
                params = regularise.dropped_weights(params, dropped)
            y, states_n, ctx = functional.run_layer(spec, params, layer_input, states_k, lengths, keep_context,
                                                    reverse, self._backend_name, cell_masks, memory)
            for r, state in zip(rows, states_n):
                for final, value in zip(finals, state):
                    final[r] = value
            mask = None
            if dropout_mask is not None and k < self.num_layers - 1:
                mask = dropout_mask(y.shape)
                y = y * mask
            contexts.append(ctx)
            masks.append(mask)
            weight_masks.append(dropped)
            layer_input = y
        saved = dict(contexts=contexts, masks=masks, weight_masks=weight_masks,
                     y_shape=(T, B, self.output_width)) if keep_context else None
        return layer_input, finals, saved

    def _trace(self, x, states, lengths, check_finite):
        x, states, lengths, batched, _ = validate.sequence_call(self._form, x, states, lengths, check_finite, False)
        D = self.num_directions
        reverse = (False, True)[:D]
        traces = {}
        layer_input = x
        for k, spec in enumerate(self.specs):
            rows = range(k * D, (k + 1) * D)
            states_k = [tuple(s[r] for s in states) for r in rows]
            params = self._direction_params(k)
            found = functional.trace_layer(spec, params, layer_input, states_k, lengths, reverse, self._backend_name)
            for d, arrays in enumerate(found):
                traces[layer_suffix(k, d)[1:]] = {name: a if batched else a[:, 0] for name, a in arrays.items()}
            if k + 1 < self.num_layers:
                layer_input, _, _ = functional.run_layer(spec, params, layer_input, states_k, lengths, False, reverse,
                                                         self._backend_name)
        return traces

    def _dropout_mask(self, shape):
        keep = 1.0 - self.dropout
        mask = (self._rng.random(shape) < keep).astype(self.dtype)
        if keep > 0:
            mask /= self.dtype.type(keep)
        return mask

    def _backward(self, dy, dstates_n):
        saved = saved_context(self, "backward: there is no training-mode forward to back-propagate through "
                                    "(call the layer in train() mode first)")
        batched = saved["batched"]
        dy, dstates = validate.sequence_grads(self._form, dy, dstates_n, saved["y_shape"], batched,
                                              check_finite=True)
        dy, dstates0, new_grads = self._stack_backward(saved, dy, dstates)
        commit([(self, saved, new_grads)])
        dx = dy[:, 0, :] if not batched else (dy.transpose(1, 0, 2) if self.batch_first else dy)
        return dx, [d if batched else d[:, 0, :] for d in dstates0]

    def _stack_backward(self, saved, dy, dstates, input_grad=True):
        """Back through a `_stack_forward`, from C-contiguous time-major dy (T, B, W) and
        C-contiguous dstates [(D*L, B, n)]: dx (T, B, I) (None unless `input_grad`: the
        first layer then skips its product), the initial states' gradients, and the
        parameter gradients as {name: array}, added nowhere."""
        D = self.num_directions
        dstates0 = [np.empty_like(s) for s in dstates]
        new_grads = {}
        for k in reversed(range(self.num_layers)):
            rows = range(k * D, (k + 1) * D)
            dstates_k = [tuple(s[r] for s in dstates) for r in rows]
            dx, ds0, grads = functional.run_layer_backward(saved["contexts"][k], dy, dstates_k, input_grad or k > 0)
            regularise.weight_gradients(grads, saved["weight_masks"][k])
            for r, state in zip(rows, ds0):
                for d0, value in zip(dstates0, state):
                    d0[r] = value
            for names, g in zip(self._direction_names(k), grads):
                new_grads.update((names[base], value) for base, value in g.items())
            if k > 0 and saved["masks"][k - 1] is not None:
                dx = dx * saved["masks"][k - 1]
            dy = dx if dx is None else np.ascontiguousarray(dx)
        return dy, dstates0, new_grads


class _OneState(_Recurrent):
    """Calling and backward of the layers whose state is h alone (RNN, GRU)."""

    def __call__(self, x: ArrayLike, h0: Optional[ArrayLike] = None, lengths: Optional[ArrayLike] = None,
                 check_finite: bool = True, memory: str = "full") -> tuple[np.ndarray, np.ndarray]:
        """Run the layer over a sequence: ``y, h_n = layer(x, h0=None, lengths=None)``.

        Parameters
        ----------
        x : array_like, (T, B, I), (B, T, I) if batch_first, or (T, I) unbatched
            The input sequence, of the layer's dtype.
        h0 : array_like, (D*num_layers, B, H) or (D*num_layers, H) unbatched, optional
            The initial state; zeros when None.
        lengths : array_like of int, (B,), optional
            Each sequence's length, 1 <= lengths[b] <= T: later steps give y = 0 and
            leave the state alone.
        check_finite : bool, default True
            Whether to refuse NaN and infinity in x and h0.
        memory : {"full", "lean"}, default "full"
            What a training-mode call keeps for `backward`: every step's activations, or
            ("lean") the state every k steps (k about sqrt(T), a multiple of 64) and the
            last stretch's activations, the backward recomputing each earlier stretch
            from its state: T/k states and a few stretches' activations instead of T
            steps', for about one more forward pass, and the same gradients bit for
            bit. No effect in eval mode.

        Returns
        -------
        y : np.ndarray, (T, B, D*H) (or as x is laid out)
            The last layer's output at every step.
        h_n : np.ndarray, (D*num_layers, B, H)
            Every layer's final state.

        Raises
        ------
        ValueError, TypeError
            A wrong shape, dtype, length or non-finite value, before any compute.
        """
        y, (h_n,) = self._forward(x, (h0,), lengths, check_finite, memory)
        return y, h_n

    forward = __call__

    def trace(self, x: ArrayLike, hx: Optional[ArrayLike] = None, lengths: Optional[ArrayLike] = None,
              check_finite: bool = True) -> dict[str, dict[str, np.ndarray]]:
        """The gates of every step, for inspection and plotting:
        ``trace = layer.trace(x, hx=None, lengths=None)``, hx the initial state h0.

        The layer's deterministic forward (its evaluation form, whatever its mode: no
        random masks, zoneout's expectation) over x, as `__call__` takes it.

        Returns
        -------
        dict
            Per layer and direction, keyed "l0", "l0_reverse", "l1", ..., a dict of
            (T, B, H) arrays, time-major whatever `batch_first` ((T, H) for unbatched x),
            zero past a sequence's end: a GRU's gate activations "r", "z", "n"; an
            Elman RNN's hidden state "h".

        Raises
        ------
        ValueError, TypeError
            As `__call__`.

        Examples
        --------
        >>> import numpy as np, rnncore as rc
        >>> gru = rc.GRU(3, 4, num_layers=2, seed=0)
        >>> trace = gru.trace(np.ones((5, 2, 3), dtype=np.float32))
        >>> sorted(trace), sorted(trace["l1"]), trace["l1"]["z"].shape
        (['l0', 'l1'], ['n', 'r', 'z'], (5, 2, 4))
        """
        return self._trace(x, (hx,), lengths, check_finite)

    def backward(self, dy: ArrayLike, dh_n: Optional[ArrayLike] = None) -> tuple[np.ndarray, np.ndarray]:
        """Back-propagate through the last training-mode forward, adding the parameter
        gradients into `grads`: ``dx, dh0 = layer.backward(dy, dh_n=None)``.

        Parameters
        ----------
        dy : array_like, the shape of that forward's y
            The gradient of the loss with respect to y.
        dh_n : array_like, the shape of h_n, optional
            The gradient with respect to h_n; zeros when None.

        Returns
        -------
        dx : np.ndarray, the shape of x
        dh0 : np.ndarray, the shape of h0

        Raises
        ------
        RuntimeError
            No training-mode forward, or its context was already consumed by a backward.
        ValueError, TypeError
            A wrong shape, dtype or non-finite gradient; nothing changes.
        """
        dx, (dh0,) = self._backward(dy, (dh_n,))
        return dx, dh0


@shared_docs
@register
class RNN(_OneState):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act tanh or relu.

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    %(num_layers)s
    nonlinearity : {"tanh", "relu"}, default "tanh"
    %(bias)s
    %(batch_first)s
    %(dropout)s
    %(bidirectional)s
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
    >>> rnn = rc.RNN(3, 5, num_layers=2, seed=0)
    >>> y, h_n = rnn(np.zeros((7, 2, 3), dtype=np.float32))
    >>> y.shape, h_n.shape
    ((7, 2, 5), (2, 2, 5))
    >>> dx, dh0 = rnn.backward(np.ones_like(y))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, backend: Optional[str] = None, *,
                 zoneout: float = 0.0, recurrent_dropout: float = 0.0, weight_dropout: float = 0.0) -> None:
        validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
        super().__init__("rnn", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, backend, nonlinearity=nonlinearity,
                         **regularise.options("rnn", False, zoneout, recurrent_dropout, weight_dropout))
        self.nonlinearity = nonlinearity


@shared_docs
@register
class GRU(_OneState):
    """GRU, gates r, z, n. reset_after=True: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    (PyTorch, cuDNN); False: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn) (Cho et al.).

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    %(num_layers)s
    %(bias)s
    %(batch_first)s
    %(dropout)s
    %(bidirectional)s
    reset_after : bool, default True
        Which form of the candidate n (above).
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
    >>> gru = rc.GRU(3, 4, batch_first=True, bidirectional=True, seed=0)
    >>> y, h_n = gru(np.zeros((2, 7, 3), dtype=np.float32))
    >>> y.shape, h_n.shape
    ((2, 7, 8), (2, 2, 4))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset_after: bool = True, dtype: DTypeLike = np.float32, seed: Optional[int] = None,
                 backend: Optional[str] = None, *, layer_norm: bool = False, zoneout: float = 0.0,
                 recurrent_dropout: float = 0.0, weight_dropout: float = 0.0) -> None:
        reset_after = validate.flag("reset_after", reset_after)
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, backend, reset_after=reset_after,
                         **regularise.options("gru", layer_norm, zoneout, recurrent_dropout, weight_dropout,
                                              reset_after))
        self.reset_after = reset_after


@shared_docs
@register
class LSTM(_Recurrent):
    """LSTM, gates i, f, g, o; optional projection (proj_size), peepholes and coupled
    input-forget gate (then the weights hold i, g, o and f = 1 - i).

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    %(num_layers)s
    %(bias)s
    %(batch_first)s
    %(dropout)s
    %(bidirectional)s
    proj_size : int, default 0
        With 0 < proj_size < hidden_size, h is projected to proj_size by `weight_hr_l{k}`.
    peephole : bool, default False
        Whether i and f see c_{t-1} and o sees c_t, through `weight_ci_l{k}`,
        `weight_cf_l{k}`, `weight_co_l{k}` of shape (H,).
    coupled_input_forget : bool, default False
        Whether f = 1 - i (the weights then hold three gates, i, g, o).
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
    >>> lstm = rc.LSTM(3, 8, proj_size=4, seed=0)
    >>> y, (h_n, c_n) = lstm(np.zeros((7, 2, 3), dtype=np.float32))
    >>> y.shape, h_n.shape, c_n.shape
    ((7, 2, 4), (1, 2, 4), (1, 2, 8))
    >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
    """

    _state_names = ("h0", "c0")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 peephole: bool = False, coupled_input_forget: bool = False, dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None, backend: Optional[str] = None, *, layer_norm: bool = False,
                 zoneout: Union[float, tuple[float, float]] = 0.0, recurrent_dropout: float = 0.0,
                 weight_dropout: float = 0.0) -> None:
        validate.positive_int("proj_size", proj_size, minimum=0)
        if proj_size >= validate.positive_int("hidden_size", hidden_size):
            raise ValueError(f"proj_size: expected 0 or less than hidden_size ({hidden_size}), got {proj_size}")
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, backend, proj_size=int(proj_size),
                         peephole=validate.flag("peephole", peephole),
                         coupled_input_forget=validate.flag("coupled_input_forget", coupled_input_forget),
                         **regularise.options("lstm", layer_norm, zoneout, recurrent_dropout, weight_dropout))
        self.proj_size = int(proj_size)
        self.peephole = bool(peephole)
        self.coupled_input_forget = bool(coupled_input_forget)

    def __call__(self, x: ArrayLike, hx: Optional[tuple[Optional[ArrayLike], Optional[ArrayLike]]] = None,
                 lengths: Optional[ArrayLike] = None, check_finite: bool = True, memory: str = "full",
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Run the LSTM over a sequence: ``y, (h_n, c_n) = lstm(x, hx=None, lengths=None)``.

        Parameters
        ----------
        x : array_like, (T, B, I), (B, T, I) if batch_first, or (T, I) unbatched
            The input sequence, of the layer's dtype.
        hx : pair (h0, c0), optional
            h0 (D*num_layers, B, proj_size or H) and c0 (D*num_layers, B, H), either None
            for zeros; without the B axis for unbatched x.
        lengths : array_like of int, (B,), optional
            Each sequence's length; later steps give y = 0 and leave the state alone.
        check_finite : bool, default True
            Whether to refuse NaN and infinity in x and hx.
        memory : {"full", "lean"}, default "full"
            As `RNN.__call__`'s.

        Returns
        -------
        y : np.ndarray, (T, B, D*(proj_size or H)) (or as x is laid out)
        (h_n, c_n) : pair of np.ndarray, shaped as h0 and c0

        Raises
        ------
        ValueError, TypeError
            A wrong shape, dtype, length or non-finite value, before any compute.
        """
        y, (h_n, c_n) = self._forward(x, validate.pair("hx", hx), lengths, check_finite, memory)
        return y, (h_n, c_n)

    forward = __call__

    def trace(self, x: ArrayLike, hx: Optional[tuple[Optional[ArrayLike], Optional[ArrayLike]]] = None,
              lengths: Optional[ArrayLike] = None, check_finite: bool = True) -> dict[str, dict[str, np.ndarray]]:
        """The gates and cell states of every step, for inspection and plotting:
        ``trace = lstm.trace(x, hx=None, lengths=None)``.

        The layer's deterministic forward (its evaluation form, whatever its mode: no
        random masks, zoneout's expectation) over x, as `__call__` takes it.

        Returns
        -------
        dict
            Per layer and direction, keyed "l0", "l0_reverse", "l1", ..., a dict of
            (T, B, H) arrays, time-major whatever `batch_first` ((T, H) for unbatched x),
            zero past a sequence's end: the gate activations "i", "f", "g", "o" (with
            coupled_input_forget, f = 1 - i) and the cell state "c" carried out of each
            step.

        Raises
        ------
        ValueError, TypeError
            As `__call__`.

        Examples
        --------
        >>> import numpy as np, rnncore as rc
        >>> lstm = rc.LSTM(3, 4, bidirectional=True, seed=0)
        >>> trace = lstm.trace(np.ones((5, 2, 3), dtype=np.float32))
        >>> sorted(trace), sorted(trace["l0"]), trace["l0"]["f"].shape
        (['l0', 'l0_reverse'], ['c', 'f', 'g', 'i', 'o'], (5, 2, 4))
        """
        return self._trace(x, validate.pair("hx", hx), lengths, check_finite)

    def backward(self, dy: ArrayLike, dh_n: Optional[tuple[Optional[ArrayLike], Optional[ArrayLike]]] = None,
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Back-propagate through the last training-mode forward, adding the parameter
        gradients into `grads`: ``dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))``.

        Parameters
        ----------
        dy : array_like, the shape of that forward's y
        dh_n : pair (dh_n, dc_n), optional
            Gradients with respect to h_n and c_n, either None for zeros.

        Returns
        -------
        dx : np.ndarray, the shape of x
        (dh0, dc0) : pair of np.ndarray, shaped as h0 and c0

        Raises
        ------
        RuntimeError
            No training-mode forward, or its context was already consumed by a backward.
        ValueError, TypeError
            A wrong shape, dtype or non-finite gradient; nothing changes.
        """
        dx, (dh0, dc0) = self._backward(dy, validate.pair("dh_n", dh_n))
        return dx, (dh0, dc0)


@shared_docs
@register
class JordanRNN(_Recurrent):
    """Jordan RNN, fed back from the previous output:
    h_t = act(W_ih x_t + b_ih + W_hh y_{t-1} + b_hh),  y_t = act_o(W_ho h_t + b_ho).

    One layer, one direction. `y, y_n = jordan(x, y0=None, lengths=None)` with y (T, B,
    output_size) and y0, y_n of shape (1, B, output_size), as a one-layer h0/h_n.

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    output_size : int
        Units of the output y, O, which is fed back.
    nonlinearity : {"tanh", "relu"}, default "tanh"
    output_activation : {"identity", "tanh", "sigmoid"}, default "identity"
    %(bias)s
    %(batch_first)s
    %(dtype)s
    %(seed)s
    %(backend)s

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> jordan = rc.JordanRNN(3, 8, 2, seed=0)
    >>> y, y_n = jordan(np.zeros((7, 4, 3), dtype=np.float32))
    >>> y.shape, y_n.shape
    ((7, 4, 2), (1, 4, 2))
    """

    _state_names = ("y0",)

    def __init__(self, input_size: int, hidden_size: int, output_size: int, nonlinearity: str = "tanh",
                 output_activation: str = "identity", bias: bool = True, batch_first: bool = False,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, backend: Optional[str] = None) -> None:
        validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
        validate.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        super().__init__("jordan", input_size, hidden_size, 1, bias, batch_first, 0.0, False, dtype, seed,
                         backend, nonlinearity=nonlinearity, output_activation=output_activation,
                         output_size=validate.positive_int("output_size", output_size))
        self.output_size = int(output_size)
        self.nonlinearity = nonlinearity
        self.output_activation = output_activation

    def __call__(self, x: ArrayLike, y0: Optional[ArrayLike] = None, lengths: Optional[ArrayLike] = None,
                 check_finite: bool = True, memory: str = "full") -> tuple[np.ndarray, np.ndarray]:
        """Run the layer: ``y, y_n = jordan(x, y0=None, lengths=None)``, y (T, B, O) (or as
        x is laid out), y0 and y_n (1, B, O) (y0 None: zeros); otherwise as `RNN.__call__`."""
        y, (y_n,) = self._forward(x, (y0,), lengths, check_finite, memory)
        return y, y_n

    forward = __call__

    def backward(self, dy: ArrayLike, dy_n: Optional[ArrayLike] = None) -> tuple[np.ndarray, np.ndarray]:
        """``dx, dy0 = jordan.backward(dy, dy_n=None)``: as `RNN.backward`, with dy_n and dy0
        shaped as y_n and y0."""
        dx, (dy0,) = self._backward(dy, (dy_n,))
        return dx, dy0
