"""Streams: a recurrent layer stepped through time, one step (or one chunk) per call.

`layer.stream(batch_size)` snapshots the layer's weights, packs them once through the
backend (`functional.open_stream`) and keeps the state between calls. Each step computes
what the layer's call computes for that step, in the same order, so stepping through a
sequence gives the call's output bit for bit. The per-step path checks its argument with
a few attribute reads and hands it to the compiled loop; anything unusual (a list, a
strided view, another dtype) goes through the layer's own checks first.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from numpy.typing import ArrayLike

from . import functional, validate

__all__ = ["Stream"]


class _Held:
    """Holds a step stack for one caller (its claim/release) for the length of a block."""
    __slots__ = ("stack",)

    def __init__(self, stack):
        self.stack = stack

    def __enter__(self):
        self.stack.claim()

    def __exit__(self, *exc):
        self.stack.release()


class Stream:
    """A layer's inference stepped through time, with the state carried between calls.

    Made by ``layer.stream(batch_size=1)`` for `rc.RNN`, `rc.GRU`, `rc.LSTM` and
    `rc.JordanRNN` (any number of layers, one direction). It computes in eval mode with
    the weights it copied when it was made (or at the last `refresh`): later changes to
    the layer are not seen until `refresh()`.

    One caller at a time: a call made while another thread's call on the same stream is
    under way raises RuntimeError. Make one stream per thread; streams of one layer
    share nothing.

    Attributes
    ----------
    batch_size : int or None
        The rows stepped together; None: one unbatched sequence (x_t of shape (I,)).
    input_size, output_size : int
        The widths of x_t and of y_t.
    dtype : numpy.dtype
        The layer's dtype; inputs must have it.
    steps : int
        Steps taken since the stream was made (reset and refresh leave it alone).

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> lstm = rc.LSTM(3, 5, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((4, 1, 3)).astype(np.float32)
    >>> stream = lstm.stream(batch_size=1)
    >>> steps = np.stack([stream.step(x_t) for x_t in x])
    >>> y, _ = lstm.eval()(x)
    >>> bool(np.array_equal(steps, y))
    True
    """

    def __init__(self, layer: Any, batch_size: Optional[int] = 1, backend: Optional[str] = None):
        if layer.bidirectional:
            raise ValueError("stream: expected a one-direction layer, got a bidirectional one (its backward "
                             "direction needs the whole sequence before its first output)")
        self.batch_size = None if batch_size is None else validate.positive_int("batch_size", batch_size)
        self._layer = layer
        self._backend = backend if backend is not None else layer._backend_name
        if backend is not None:
            functional.check_backend(backend)
        self._rows = 1 if batch_size is None else self.batch_size
        self.dtype = layer.dtype
        self.input_size = layer.input_size
        self.output_size = layer.output_width
        self._batch_first = layer.batch_first
        self._state_names = layer._state_names
        self._widths = layer.specs[0].state_sizes
        self._layers = layer.num_layers
        self.steps = 0
        self._step_shape = (self._rows, self.input_size) if batch_size is not None else (self.input_size,)
        self._out_step = (self._rows, self.output_size) if batch_size is not None else (self.output_size,)
        self._open(None)

    def _open(self, keep, params=None):
        """(Re)build the step stack from `params` (None: copies of the layer's weights
        now); `keep`, the state arrays to carry over (None: zeros)."""
        layer = self._layer
        if params is None:
            params = [{name: np.array(value, order="C") for name, value in layer._direction_params(k)[0].items()}
                      for k in range(self._layers)]
        stack = functional.open_stream(layer.specs, params, self._rows, self.dtype, self._backend)
        if keep is not None:
            for held, kept in zip(stack.states(), keep):
                for h, k in zip(held, kept):
                    h[...] = k
        self._stack, self._params = stack, params

    def _held(self):
        """A context in which no other thread's call runs on the stack."""
        return _Held(self._stack)

    # -- stepping --------------------------------------------------------------------

    def step(self, x_t: ArrayLike, out: Optional[np.ndarray] = None, check_finite: bool = True) -> np.ndarray:
        """Advance one step: ``y_t = stream.step(x_t)``.

        Parameters
        ----------
        x_t : array_like, (batch_size, I), or (I,) when batch_size is None
            The step's input, of the layer's dtype.
        out : np.ndarray, optional
            Where to write y_t: a C-contiguous array of y_t's shape and the layer's
            dtype, reused across steps so that a step allocates nothing.
        check_finite : bool, default True
            Whether to refuse NaN and infinity in x_t.

        Returns
        -------
        y_t : np.ndarray, (batch_size, output_size), or (output_size,)
            The last layer's output at this step (`out` when given).

        Raises
        ------
        ValueError, TypeError
            A wrong shape or dtype, a non-finite value, or a wrong `out`; the state is
            left as it was.
        """
        if not (type(x_t) is np.ndarray and x_t.dtype is self.dtype and x_t.shape == self._step_shape
                and x_t.flags.c_contiguous):
            x_t = self._checked("x_t", x_t, self._step_shape)
        if check_finite is not True and check_finite is not False:
            check_finite = validate.flag("check_finite", check_finite)
        if out is None:
            out = np.empty(self._out_step, self.dtype)
        # the step stack checks `out` itself, before any step: the fast path checks once
        self._stack.run(x_t, out, check_finite)
        self.steps += 1
        return out

    def __call__(self, x: ArrayLike, out: Optional[np.ndarray] = None, check_finite: bool = True) -> np.ndarray:
        """Advance through a chunk of steps: ``y = stream(x)``; the state carries over to
        the next call.

        Parameters
        ----------
        x : array_like, (T, batch_size, I) ((batch_size, T, I) if the layer is
            batch_first), or (T, I) when batch_size is None
            The chunk's inputs, of the layer's dtype; T >= 1.
        out : np.ndarray, optional
            Where to write y: C-contiguous, y's shape and the layer's dtype.
        check_finite : bool, default True
            Whether to refuse NaN and infinity in x (checked before the first step).

        Returns
        -------
        y : np.ndarray, (T, batch_size, output_size) (or as x is laid out)
            The last layer's output at every step of the chunk.

        Raises
        ------
        ValueError, TypeError
            A wrong shape or dtype, a non-finite value, or a wrong `out`; the state is
            left as it was.
        """
        x = validate.array("x", x, self.dtype)
        check_finite = validate.flag("check_finite", check_finite)
        batched = self.batch_size is not None
        batch_first = batched and self._batch_first
        T = x.shape[int(batch_first)] if x.ndim > int(batch_first) else 0
        if batched:
            expected = (self._rows, T, self.input_size) if batch_first else (T, self._rows, self.input_size)
        else:
            expected = (T, self.input_size)
        if x.shape != expected or T < 1:
            raise ValueError(f"x: expected shape {self._chunk_shape('T')} with T >= 1, got {x.shape}")
        if batch_first:
            x = x.transpose(1, 0, 2)
        x = np.ascontiguousarray(x)
        shape = (T, self._rows, self.output_size)
        if out is None:
            y = np.empty(shape, self.dtype)
        else:
            laid = ((self._rows, T, self.output_size) if batch_first else shape) if batched else (T, self.output_size)
            out = self._out("out", out, laid)
            # the loop writes time-major rows: straight into a time-major out
            y = np.empty(shape, self.dtype) if batch_first else out.reshape(shape)
        self._stack.run(x.reshape(T, self._rows, self.input_size), y, check_finite)
        self.steps += T
        if out is not None:
            if batch_first:
                out[...] = y.transpose(1, 0, 2)
            return out
        if batch_first:
            return np.ascontiguousarray(y.transpose(1, 0, 2))
        return y if batched else y[:, 0, :]

    def _chunk_shape(self, T):
        if self.batch_size is None:
            return f"({T}, {self.input_size})"
        if self._batch_first:
            return f"({self.batch_size}, {T}, {self.input_size})"
        return f"({T}, {self.batch_size}, {self.input_size})"

    def _checked(self, name, value, shape):
        arr = validate.array(name, value, self.dtype)
        validate.shape(name, arr, shape)
        return np.ascontiguousarray(arr)

    def _out(self, name, out, shape):
        if not isinstance(out, np.ndarray) or out.dtype != self.dtype or out.shape != tuple(shape) \
                or not out.flags.c_contiguous or not out.flags.writeable:
            got = (f"{out.dtype} {out.shape}" + ("" if out.flags.c_contiguous else ", not C-contiguous")
                   + ("" if out.flags.writeable else ", read-only")) if isinstance(out, np.ndarray) \
                else type(out).__name__
            raise ValueError(f"{name}: expected a writeable C-contiguous {self.dtype} array of shape "
                             f"{tuple(shape)}, got {got}")
        return out

    # -- state -----------------------------------------------------------------------

    @property
    def state(self):
        """The state now, shaped as the layer's final state: h_n (num_layers, B, H) (or
        (num_layers, H) when batch_size is None), (h_n, c_n) for an LSTM; copies."""
        with self._held():
            held = self._stack.states()
            parts = tuple(np.stack([layer[k] for layer in held]) for k in range(len(self._widths)))
        if self.batch_size is None:
            parts = tuple(p[:, 0, :] for p in parts)
        return parts if len(parts) > 1 else parts[0]

    def reset(self, state: Any = None, rows: Optional[ArrayLike] = None) -> None:
        """Set the state: zeros (``state=None``) or the given one, for every row or only
        for `rows`.

        Parameters
        ----------
        state : array_like or tuple, optional
            Shaped as `state` (h, or (h, c) for an LSTM, as a tuple or a list), with
            len(rows) rows in place of batch_size when `rows` is given; zeros when None.
        rows : sequence of int, optional
            The batch rows to set (distinct, 0 <= row < batch_size; none: nothing to
            set): a server that multiplexes many users' streams in one batch starts
            one user's sequence without touching the others.

        Raises
        ------
        ValueError, TypeError
            A wrong shape, dtype or row; the state is left as it was.
        """
        if rows is not None:
            if self.batch_size is None:
                raise ValueError("rows: expected None for an unbatched stream (batch_size=None), "
                                 f"got {rows!r}")
            picked = np.asarray(rows)
            if picked.ndim == 1 and picked.size == 0:
                picked = picked.astype(np.int64)   # [] is float64 to numpy
            if picked.ndim != 1 or picked.dtype.kind not in "iu":
                raise ValueError(f"rows: expected a 1-D sequence of integers, got {rows!r}")
            if picked.size and (picked.min() < 0 or picked.max() >= self._rows
                                or np.unique(picked).size != picked.size):
                raise ValueError(f"rows: expected distinct rows in [0, {self._rows}), got {picked.tolist()}")
        else:
            picked = slice(None)
        count = self._rows if rows is None else picked.size
        parts = tuple(state) if isinstance(state, (tuple, list)) else (state,)
        if len(parts) != len(self._widths) and state is not None:
            raise ValueError(f"state: expected {' and '.join(self._state_names)} "
                             f"({len(self._widths)} arrays), got {len(parts)}")
        values = []
        for name, width, value in zip(self._state_names, self._widths, parts if state is not None else
                                      (None,) * len(self._widths)):
            if value is None:
                values.append(np.zeros((self._layers, count, width), self.dtype))
                continue
            arr = validate.array(name, value, self.dtype)
            if self.batch_size is None:
                validate.shape(name, arr, (self._layers, width))
                arr = arr[:, None, :]
            else:
                validate.shape(name, arr, (self._layers, count, width))
            validate.finite(name, arr, skippable=False)
            values.append(arr)
        with self._held():
            for k, layer in enumerate(self._stack.states()):
                for held, value in zip(layer, values):
                    held[picked] = value[k]

    def refresh(self) -> None:
        """Take the layer's current weights (packed again); the state carries over."""
        with self._held():
            self._open([tuple(np.array(s) for s in layer) for layer in self._stack.states()])

    def __deepcopy__(self, memo):
        """An independent stream: the same weights (as this one holds them) and state,
        stepping on from here on its own. (A shallow copy would share the state, so
        `copy.copy` gives this too.)"""
        twin = object.__new__(type(self))
        twin.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("_stack", "_params")})
        with self._held():
            state = [tuple(np.array(s) for s in layer) for layer in self._stack.states()]
        twin._open(state, [{name: value.copy() for name, value in p.items()} for p in self._params])
        return twin

    __copy__ = lambda self: self.__deepcopy__({})

    def __reduce__(self):
        raise TypeError("Stream: cannot be pickled (it holds packed weights and compiled buffers); pickle "
                        "the layer, or its state_dict and stream.state, and make a stream where they load")

    def __repr__(self):
        return (f"Stream({type(self._layer).__name__}({self.input_size}, {self.output_size}), "
                f"batch_size={self.batch_size}, steps={self.steps})")
