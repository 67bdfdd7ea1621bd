"""rnncore's kernels inside PyTorch models: `import rnncore.torch as rct`.

`rct.LSTM`, `rct.GRU` and `rct.RNN` are torch.nn.LSTM, GRU and RNN (same constructor,
parameters, state_dict and calling) whose forward runs rnncore's kernels under autograd
for CPU float32/float64 tensors. `rct.accelerate(model)` turns every torch.nn LSTM, GRU
and RNN inside a model into them, in place (the same module objects and Parameters, so
optimizers and hooks keep working); `rct.restore(model)` turns them back.

Each forward keeps its own context (any number of forwards before a backward, as in
torch), freed when torch frees the graph's saved tensors. The kernels read the module's
weights, the input and the initial states where they lie when the layout allows
(contiguous, time-major), and return their results as tensors over rnncore's arrays.

A float32 LSTM of hidden_size >= ONEDNN_LSTM_MIN_HIDDEN (128) without projection, on an
unpacked input, runs torch's own forward where torch has oneDNN enabled and the calling
thread flushes subnormal numbers (torch.set_flush_denormal(True)): oneDNN's fused LSTM
is the faster one there, but only then (its backward slows 10-17x on subnormal values). What the kernels do not serve runs torch's own forward
too, unchanged: other devices and dtypes, tensor subclasses, mixed dtypes, autocast,
scripting, tracing and compiling, torch.func transforms and forward-mode AD (the ways to
a second derivative that show at forward time), and whatever torch would refuse (torch
then raises its own error). A backward with create_graph=True through rnncore's kernels
raises: they have no second derivative.

Dropout between layers draws its masks from torch's generator as torch's own modules do
(one bernoulli_ per layer output, over the packed rows for a PackedSequence), so under
the same torch.manual_seed the masks, and the numbers, are torch's.

Threads: the kernels and BLAS use torch.get_num_threads() unless rnncore's own count
was set (rc.set_num_threads or RNNCORE_NUM_THREADS).
"""
import sys

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..core import functional, layers

__all__ = ["LSTM", "GRU", "RNN", "accelerate", "restore"]

_DTYPES = (torch.float32, torch.float64)
_NUMPY = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_PLAIN_TYPES = (torch.Tensor, nn.Parameter)
# torch runs a float32 LSTM without projection on unpacked input through oneDNN's fused
# kernels, which from this hidden size on are faster than rnncore's: a training step at
# one thread, B = 16, measured torch / rnncore 1.4x at H = 32, 1.0x at H = 64, 0.75-0.87x
# at H = 128, 0.62-0.64x at H = 256 (2-core AMD EPYC). There torch keeps its own forward,
# provided subnormal numbers are flushed: oneDNN's backward takes them at full cost, and
# a training loop's small gradients make them. At (T, B, I, H) = (200, 16, 16, 128) on a
# Xeon (AVX-512), a torch training step took 145-275 ms as they arose, 13-19 ms with
# torch.set_flush_denormal(True), and 17.7 ms on rnncore's kernels, which flush them
# inside (rc_denormals_off).
ONEDNN_LSTM_MIN_HIDDEN = 128


def _host_allows():
    """False where torch must run its own forward whatever the tensors: its graph
    capture (scripting, tracing, compiling), torch.func transforms, forward-mode AD
    and autocast see inside torch's operators, not inside an opaque Function."""
    return not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch._C._functorch.peek_interpreter_stack() is not None
                or torch.autograd.forward_ad._current_level >= 0
                or torch._C._is_any_autocast_enabled())


def _served(tensor, dtype):
    return (type(tensor) in _PLAIN_TYPES and tensor.dtype == dtype and tensor.device.type == "cpu"
            and tensor.layout == torch.strided and not tensor.is_nested)


def _denormals_flushed(smallest=sys.float_info.min, two=2.0):
    """Whether this thread flushes subnormal results to zero (torch.set_flush_denormal's
    setting): half the smallest normal double is then 0. The operands are arguments, so
    the division runs now, under the thread's floating-point settings."""
    return smallest / two == 0.0


def _onednn_lstm(module, dtype, packed):
    """Whether torch would run this LSTM call on oneDNN at a size where that is faster."""
    return (dtype == torch.float32 and not packed and not module.proj_size
            and module.hidden_size >= ONEDNN_LSTM_MIN_HIDDEN and _denormals_flushed()
            and torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled())


def _core(module):
    """rnncore's layer of `module`'s structure, its parameter arrays views of the
    module's weights. The views are rebuilt when a weight's storage changes (`.data =`,
    `.to()`, functional_call); in-place updates (optimizers, load_state_dict) reach them
    as they are. A cached view holds its storage, so a new storage never reuses the
    address of the one it viewed."""
    weights = module._flat_weights
    structure = (module.mode, module.input_size, module.hidden_size, module.num_layers, module.bias,
                 module.bidirectional, module.proj_size)
    key = tuple(w.data_ptr() for w in weights)
    entry = module.__dict__.get("_rnncore_core")
    if entry is None or entry[0] != structure:
        entry = module.__dict__["_rnncore_core"] = [structure, _build_core(module), None]
    core = entry[1]
    if entry[2] != key:
        core._params = {name: w.detach().numpy() for name, w in zip(module._flat_weights_names, weights)}
        core.__dict__.pop("_by_layer", None)
        entry[2] = key
    return core


def _build_core(module):
    # dropout is drawn per call from torch's generator (`_Call.dropout_mask`), not by the layer
    shared = dict(num_layers=module.num_layers, bias=module.bias, bidirectional=module.bidirectional)
    if module.mode == "LSTM":
        return layers.LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **shared)
    if module.mode == "GRU":
        return layers.GRU(module.input_size, module.hidden_size, **shared)
    nonlinearity = "relu" if module.mode == "RNN_RELU" else "tanh"
    return layers.RNN(module.input_size, module.hidden_size, nonlinearity=nonlinearity, **shared)


def _follow_torch_threads():
    functional.follow_threads(torch.get_num_threads())


class _Call:
    """One forward through the kernels: where the caller's tensors lie in the C-contiguous
    time-major (T, B, ...) arrays the kernels take, and the way back.

    A PackedSequence is scattered into a zero-padded batch in the caller's order, with
    its lengths; the initial states are in the caller's order already, as torch's are."""

    @classmethod
    def of(cls, module, input, hx):
        """The call for `module(input, hx)`, or None where torch must run it."""
        packed = isinstance(input, PackedSequence)
        x = input.data if packed else input
        if not isinstance(x, torch.Tensor) or x.dtype not in _DTYPES or not _host_allows():
            return None
        dtype = x.dtype
        weights = module._flat_weights
        if not all(w is not None and _served(w, dtype) for w in weights) or not _served(x, dtype):
            return None
        lstm = module.mode == "LSTM"
        if lstm and _onednn_lstm(module, dtype, packed):
            return None
        if hx is None:
            states = ()
        elif lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                return None
            states = tuple(hx)
        else:
            states = (hx,)
        if not all(isinstance(s, torch.Tensor) and _served(s, dtype) for s in states):
            return None

        if packed:
            if x.dim() != 2:
                return None
            T, B, batched = len(input.batch_sizes), int(input.batch_sizes[0]), True
        else:
            if x.dim() not in (2, 3):
                return None
            batched = x.dim() == 3
            T, B = (x.shape[:2] if not module.batch_first else x.shape[1::-1]) if batched else (x.shape[0], 1)
        if x.shape[-1] != module.input_size or T < 1 or B < 1:
            return None
        rows = module.num_layers * (2 if module.bidirectional else 1)
        widths = (module.proj_size or module.hidden_size, module.hidden_size)[:2 if lstm else 1]
        lead = (rows, B) if batched else (rows,)
        if any(tuple(s.shape) != lead + (w,) for s, w in zip(states, widths)):
            return None
        return cls(module, input, x, states, weights, packed, batched, T, B, widths)

    def __init__(self, module, input, x, states, weights, packed, batched, T, B, widths):
        self.module, self.x, self.states, self.weights = module, x, states, weights
        self.packed, self.batched, self.T, self.B, self.widths = packed, batched, T, B, widths
        self.batch_first = module.batch_first and batched and not packed
        self.lstm = module.mode == "LSTM"
        self.lengths = None
        if packed:
            self.packing = (input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            sizes = input.batch_sizes.numpy()
            order = np.arange(B) if input.sorted_indices is None else input.sorted_indices.numpy()
            steps = np.repeat(np.arange(T), sizes)
            starts = np.concatenate(([0], np.cumsum(sizes[:-1])))
            # packed row r is step steps[r] of the caller's sequence batch_of[r]
            self.steps, self.batch_of = steps, order[np.arange(len(steps)) - starts[steps]]
            lengths = np.empty(B, np.int64)
            lengths[order] = np.count_nonzero(sizes[None, :] > np.arange(B)[:, None], axis=1)
            self.lengths = lengths

    # -- the caller's layout to the kernels' and back --------------------------------

    def _to_kernels(self, tensor, width):
        """x or dy as a C-contiguous (T, B, width) array: a view where it already is one."""
        arr = tensor.detach().numpy()
        if self.packed:
            padded = np.zeros((self.T, self.B, width), arr.dtype)
            padded[self.steps, self.batch_of] = arr
            return padded
        if not self.batched:
            arr = arr[:, None, :]
        elif self.batch_first:
            arr = arr.transpose(1, 0, 2)
        return np.ascontiguousarray(arr)

    def _from_kernels(self, arr):
        """y or dx (T, B, n) in the caller's layout, as a tensor; batch-first as a
        transposed view of the time-major result, the strides torch's own modules give."""
        if self.packed:
            return torch.from_numpy(arr[self.steps, self.batch_of])
        if not self.batched:
            return torch.from_numpy(arr[:, 0, :])
        tensor = torch.from_numpy(arr)
        return tensor.transpose(0, 1) if self.batch_first else tensor

    def _states_to_kernels(self, given, dtype):
        """States or their gradients as C-contiguous (D*L, B, n) arrays, zeros for None."""
        rows = self.module.num_layers * (2 if self.module.bidirectional else 1)
        out = []
        for tensor, width in zip(given, self.widths):
            if tensor is None:
                out.append(np.zeros((rows, self.B, width), dtype))
                continue
            arr = tensor.detach().numpy()
            out.append(np.ascontiguousarray(arr if self.batched else arr[:, None, :]))
        return out

    def _states_from_kernels(self, arrays):
        return [torch.from_numpy(a if self.batched else a[:, 0, :]) for a in arrays]

    def dropout_mask(self, shape):
        """torch's own mask: `at::dropout` draws empty_like(output).bernoulli_(1 - p) and
        divides by 1 - p, over the packed rows for packed input; p = 1 draws nothing."""
        p = self.module.dropout
        if p >= 1:
            return np.zeros(shape, _NUMPY[self.x.dtype])
        rows = (len(self.steps), shape[2]) if self.packed else shape
        mask = torch.empty(rows, dtype=self.x.dtype).bernoulli_(1 - p).div_(1 - p).numpy()
        if not self.packed:
            return mask
        padded = np.zeros(shape, mask.dtype)
        padded[self.steps, self.batch_of] = mask
        return padded

    # -- the two passes ----------------------------------------------------------------

    def forward(self, keep_context):
        """(y, final states) as tensors, and the context for `backward` (None unless kept)."""
        core = _core(self.module)
        _follow_torch_threads()
        x = self._to_kernels(self.x, self.module.input_size)
        given = self.states or (None,) * len(self.widths)
        states = self._states_to_kernels(given, x.dtype)
        training = self.module.training and self.module.dropout > 0
        y, finals, saved = core._stack_forward(x, states, self.lengths, keep_context,
                                               self.dropout_mask if training else None)
        return self._from_kernels(y), self._states_from_kernels(finals), (core, saved)

    def backward(self, context, dy, dfinals, needed):
        """The gradients of x, of the given initial states and of the weights, as tensors,
        None where `needed` (autograd's needs_input_grad, without the call) says so."""
        core, saved = context
        T, B, W = saved["y_shape"]
        dtype = _NUMPY[self.x.dtype]
        dy = np.zeros((T, B, W), dtype) if dy is None else self._to_kernels(dy, W)
        dfinals = self._states_to_kernels(dfinals, dtype)
        _follow_torch_threads()
        dx, dstates0, grads = core._stack_backward(saved, dy, dfinals, input_grad=needed[0])
        grads = dict(grads)
        n = len(self.states)
        dstates0 = [d if need else None for d, need in zip(self._states_from_kernels(dstates0), needed[1:1 + n])]
        weight_grads = [torch.from_numpy(grads[name]) if need else None
                        for name, need in zip(self.module._flat_weights_names, needed[1 + n:])]
        return self._from_kernels(dx) if needed[0] else None, dstates0, weight_grads

    def run(self):
        tensors = (self.x, *self.states, *self.weights)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            y, *finals = _Kernels.apply(self, *tensors)
        else:
            y, finals, _ = self.forward(keep_context=False)
        if self.packed:
            y = PackedSequence(y, *self.packing)
        return (y, tuple(finals)) if self.lstm else (y, finals[0])



class _Kernels(torch.autograd.Function):
    """rnncore's forward and backward as one autograd node per call."""

    @staticmethod
    def forward(ctx, call, *tensors):
        y, finals, context = call.forward(keep_context=True)
        # The context rides on a tensor saved for backward, so that torch frees it with
        # the graph's saved tensors (after a backward without retain_graph) rather than
        # with the graph's nodes. Saving the inputs and weights makes torch refuse a
        # backward after any of them was changed in place, as its own modules do: the
        # kernels' context reads them where they lie.
        holder = torch.empty(0)
        holder.rnncore_context = (call, context)
        ctx.save_for_backward(*tensors, holder)
        ctx.set_materialize_grads(False)
        return (y, *finals)

    @staticmethod
    def backward(ctx, dy, *dfinals):
        *_, holder = ctx.saved_tensors
        call, context = holder.rnncore_context
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"rnncore.torch.{type(call.module).__name__}: backward with create_graph=True needs a second "
                "derivative, which rnncore's kernels do not have; run torch's own module for it "
                "(rnncore.torch.restore(model)), or a torch.func transform, under which the module runs "
                "torch's forward")
        dx, dstates0, weight_grads = call.backward(context, dy, dfinals, ctx.needs_input_grad[1:])
        return (None, dx, *dstates0, *weight_grads)


class _Accelerated:
    """The forward of LSTM, GRU and RNN; torch.nn's class supplies everything else."""

    def forward(self, input, hx=None):
        self._update_flat_weights()
        call = _Call.of(self, input, hx)
        if call is None:
            return super().forward(input, hx)
        return call.run()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_rnncore_core", None)  # views of this process's tensors: rebuilt on first use
        return state


class LSTM(_Accelerated, nn.LSTM):
    """torch.nn.LSTM whose forward runs rnncore's kernels on CPU float32/float64 tensors,
    under autograd; the same constructor, parameters, state_dict and calling
    (`y, (h_n, c_n) = lstm(x, (h0, c0))`). The module's docstring says what falls back
    to torch's own forward.

    Parameters
    ----------
    *args, **kwargs
        torch.nn.LSTM's: input_size, hidden_size, num_layers=1, bias=True,
        batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
        dtype=None.

    Raises
    ------
    ValueError, TypeError
        As torch.nn.LSTM raises for its arguments and inputs.

    Examples
    --------
    >>> import torch, rnncore.torch as rct
    >>> lstm = rct.LSTM(3, 4, batch_first=True)
    >>> y, (h_n, c_n) = lstm(torch.ones(2, 5, 3))          # (B, T, I)
    >>> y.shape, h_n.shape, c_n.shape
    (torch.Size([2, 5, 4]), torch.Size([1, 2, 4]), torch.Size([1, 2, 4]))
    >>> y.sum().backward()
    >>> lstm.weight_hh_l0.grad.shape
    torch.Size([16, 4])
    """


class GRU(_Accelerated, nn.GRU):
    """torch.nn.GRU whose forward runs rnncore's kernels on CPU float32/float64 tensors,
    under autograd; the same constructor, parameters, state_dict and calling
    (`y, h_n = gru(x, h0)`). The module's docstring says what falls back to torch's own
    forward.

    Parameters
    ----------
    *args, **kwargs
        torch.nn.GRU's: input_size, hidden_size, num_layers=1, bias=True,
        batch_first=False, dropout=0.0, bidirectional=False, device=None,
        dtype=None.

    Raises
    ------
    ValueError, TypeError
        As torch.nn.GRU raises for its arguments and inputs.

    Examples
    --------
    >>> import torch, rnncore.torch as rct
    >>> gru = rct.GRU(3, 4, num_layers=2, bidirectional=True).double()
    >>> y, h_n = gru(torch.ones(5, 2, 3, dtype=torch.float64))   # (T, B, I)
    >>> y.shape, h_n.shape
    (torch.Size([5, 2, 8]), torch.Size([4, 2, 4]))
    """


class RNN(_Accelerated, nn.RNN):
    """torch.nn.RNN whose forward runs rnncore's kernels on CPU float32/float64 tensors,
    under autograd; the same constructor, parameters, state_dict and calling
    (`y, h_n = rnn(x, h0)`). The module's docstring says what falls back to torch's own
    forward.

    Parameters
    ----------
    *args, **kwargs
        torch.nn.RNN's: input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
        batch_first=False, dropout=0.0, bidirectional=False, device=None,
        dtype=None.

    Raises
    ------
    ValueError, TypeError
        As torch.nn.RNN raises for its arguments and inputs.

    Examples
    --------
    >>> import torch, rnncore.torch as rct
    >>> from torch.nn.utils.rnn import pack_padded_sequence
    >>> rnn = rct.RNN(3, 4, nonlinearity="relu")
    >>> packed = pack_padded_sequence(torch.ones(5, 2, 3), [5, 3])
    >>> y, h_n = rnn(packed)
    >>> y.data.shape, h_n.shape                          # 5 + 3 packed rows
    (torch.Size([8, 4]), torch.Size([1, 2, 4]))
    """


_ACCELERATED = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}
_PLAIN = {fast: plain for plain, fast in _ACCELERATED.items()}


def _check_module(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")


def accelerate(model):
    """Turn every torch.nn.LSTM, GRU and RNN inside `model` (itself included) into
    rnncore's, in place: the same module objects, Parameters, buffers and hooks, only
    their class changes, so optimizers and state_dicts keep working. Subclasses of
    torch's modules are left alone (their forward may differ).

    Parameters
    ----------
    model : torch.nn.Module
        The model to change.

    Returns
    -------
    torch.nn.Module
        `model` itself.

    Raises
    ------
    TypeError
        `model` is not a torch.nn.Module.

    Examples
    --------
    >>> import torch, rnncore.torch as rct
    >>> model = torch.nn.Sequential(torch.nn.GRU(3, 4), torch.nn.Linear(4, 1))
    >>> weight = model[0].weight_ih_l0
    >>> rct.accelerate(model) is model, type(model[0]) is rct.GRU
    (True, True)
    >>> model[0].weight_ih_l0 is weight
    True
    """
    _check_module(model)
    for module in model.modules():
        fast = _ACCELERATED.get(type(module))
        if fast is not None:
            module.__class__ = fast
    return model


def restore(model):
    """Undo `accelerate`: every rnncore.torch LSTM, GRU and RNN inside `model` (itself
    included) becomes torch's own class again, in place.

    Parameters
    ----------
    model : torch.nn.Module
        The model to change.

    Returns
    -------
    torch.nn.Module
        `model` itself.

    Raises
    ------
    TypeError
        `model` is not a torch.nn.Module.

    Examples
    --------
    >>> import torch, rnncore.torch as rct
    >>> model = rct.accelerate(torch.nn.Sequential(torch.nn.LSTM(3, 4)))
    >>> type(rct.restore(model)[0]) is torch.nn.LSTM
    True
    """
    _check_module(model)
    for module in model.modules():
        plain = _PLAIN.get(type(module))
        if plain is not None:
            module.__class__ = plain
            module.__dict__.pop("_rnncore_core", None)
    return model
