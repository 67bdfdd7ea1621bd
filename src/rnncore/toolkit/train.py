"""The training loop's pieces: one optimisation step, truncated BPTT over a long series
with carried state, early stopping on a validation metric, a small `fit` loop with a
progress bar, and step-by-step generation from a trained model.

A *model* here is anything called as `y, states = model(x, states, lengths)` with
`model.backward(dy)`: a `Sequential`, usually. Every random choice takes a seed or a
`numpy.random.Generator`, so a run is reproducible from its seeds alone.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union
import math
import numbers

import numpy as np
from numpy.typing import ArrayLike

from ..core import functional as _functional
from ..core import validate as _validate
from ..core.docs import filled
from .clip import clip_grad_norm_

__all__ = ["train_step", "truncated_bptt", "EarlyStopping", "fit", "minibatches", "generate", "forecast"]

# The entries the functions' docstrings share, filled in by `filled(_DOCS)`
_DOCS = {
    'model': 'model : model\n        Called as ``y, states = model(x, states, lengths)``, with ``model.backward(dy)``\n'
             '        (a Sequential, usually).',
    'loss_fn': 'loss_fn : loss\n        Called as ``loss_fn(y, target)``, with ``loss_fn.backward()`` (MSELoss,\n'
               '        CrossEntropyLoss).',
    'optimizer': 'optimizer : optimizer or None\n        Stepped after the backward; None leaves the gradients accumulated in the model.',
    'states': 'states : list, optional\n        The model\'s initial states, one per recurrent layer; None: zeros.',
    'max_norm': 'max_norm : float, optional\n        Clip the global gradient norm to this before the step; None: no clipping.',
    'loss_states': 'loss : float\n    states : list\n        The model\'s final states, to carry on.',
    'model_raises': 'What the model, loss or optimizer raise on a wrong input.',
    'memory': 'memory : {"full", "lean"}, default "full"\n        "lean": passed to the model as ``memory="lean"`` (a Sequential\'s recurrent layers\n'
              '        then keep a state every k steps for the backward rather than every step\'s\n'
              '        activations, for the same gradients).',
    'model_example': '>>> import numpy as np, rnncore as rc\n'
                     '    >>> model = rc.Sequential(rc.GRU(1, 4, seed=0), rc.Linear(4, 1, seed=1))',
}


def _forward(model, memory, *args):
    """model(*args), given memory="lean" when asked for (a model of one's own that never
    is need not take it)."""
    if _functional.check_memory(memory) == "full":
        return model(*args)
    return model(*args, memory=memory)


@filled(_DOCS)
def train_step(model: Any, loss_fn: Any, optimizer: Any, x: ArrayLike, target: ArrayLike, states: Optional[list] = None,
               lengths: Optional[ArrayLike] = None, max_norm: Optional[float] = None,
               mask: Optional[ArrayLike] = None, memory: str = "full") -> tuple[float, list]:
    """Zero the gradients, forward, loss, backward, clip the global gradient norm to
    `max_norm` (if given), and one optimizer step (if given; None leaves the gradients
    accumulated in the model). Returns (loss, final states).

    Parameters
    ----------
    %(model)s
    %(loss_fn)s
    %(optimizer)s
    x : array_like, the model's input, (T, B, ...) for a time-major one
    target : array_like, what loss_fn compares the model's output with
    %(states)s
    lengths : array_like of int, (B,), optional
        Passed to the model.
    %(max_norm)s
    mask : array_like, optional
        Passed to loss_fn as its third argument (MSELoss's mask).
    %(memory)s

    Returns
    -------
    %(loss_states)s

    Raises
    ------
    ValueError, TypeError
        %(model_raises)s

    Examples
    --------
    %(model_example)s
    >>> opt = rc.optim.SGD(model, lr=0.1)
    >>> x = np.zeros((5, 2, 1), dtype=np.float32)
    >>> loss, states = rc.train.train_step(model, rc.MSELoss(), opt, x, x + 1, max_norm=1.0)
    >>> len(states)
    1
    """
    model.train()
    model.zero_grad()
    y, finals = _forward(model, memory, x, states, lengths)
    loss = loss_fn(y, target) if mask is None else loss_fn(y, target, mask)
    model.backward(loss_fn.backward())
    if max_norm is not None:
        clip_grad_norm_(model, max_norm)
    if optimizer is not None:
        optimizer.step()
    return loss, finals


@filled(_DOCS)
def truncated_bptt(model: Any, loss_fn: Any, optimizer: Any, x: np.ndarray, target: np.ndarray, chunk: int,
                   states: Optional[list] = None, max_norm: Optional[float] = None,
                   memory: str = "full") -> tuple[float, Any]:
    """One pass over a long time-major series x (T, B, ...) with targets (T, B, ...) in
    chunks of `chunk` steps. Each chunk starts from the previous chunk's final state (the
    forward sees the whole history) but back-propagates within itself only, then steps
    the optimizer; with chunk >= T this is one step of full BPTT. With optimizer=None
    the chunks' gradients accumulate instead. Returns (mean loss per step, final states).

    Parameters
    ----------
    %(model)s
    %(loss_fn)s
    %(optimizer)s
    x : np.ndarray, (T, B, ...)
        The series, time-major.
    target : np.ndarray, (T, B, ...)
    chunk : int
        Steps per chunk, >= 1.
    %(states)s
    %(max_norm)s
    %(memory)s

    Returns
    -------
    %(loss_states)s

    Raises
    ------
    ValueError, TypeError
        chunk not a positive int, target of another length than x, or
        %(model_raises)s

    Examples
    --------
    %(model_example)s
    >>> opt = rc.optim.Adam(model, lr=1e-2)
    >>> x = np.sin(np.linspace(0, 6, 40, dtype=np.float32)).reshape(40, 1, 1)
    >>> loss, states = rc.train.truncated_bptt(model, rc.MSELoss(), opt, x[:-1], x[1:], chunk=10)
    >>> states[0].shape
    (1, 1, 4)
    """
    chunk = _validate.positive_int("chunk", chunk)
    _functional.check_memory(memory)
    T = len(x)
    if len(target) != T:
        raise ValueError(f"target: expected {T} steps (as x), got {len(target)}")
    total = 0.0
    if optimizer is None:
        model.zero_grad()
    for start in range(0, T, chunk):
        stop = min(start + chunk, T)
        model.train()
        if optimizer is not None:
            model.zero_grad()
        y, states = _forward(model, memory, x[start:stop], states)
        loss = loss_fn(y, target[start:stop])
        model.backward(loss_fn.backward())
        if max_norm is not None:
            clip_grad_norm_(model, max_norm)
        if optimizer is not None:
            optimizer.step()
        total += loss * (stop - start)
    return total / T, states


class EarlyStopping:
    """Stop when the validation metric (lower is better) has not improved by more than
    `min_delta` for `patience` checks; keeps a copy of the best parameters.

        if stopper.step(val_loss, model): break
        stopper.restore(model)

    Parameters
    ----------
    patience : int, default 5
        Checks without improvement before stopping, >= 1.
    min_delta : float >= 0, default 0.0
        The improvement that counts.

    Raises
    ------
    ValueError, TypeError
        patience or min_delta out of range.

    Examples
    --------
    >>> import rnncore as rc
    >>> model = rc.Linear(2, 1, seed=0)
    >>> stopper = rc.train.EarlyStopping(patience=2)
    >>> [stopper.step(v, model) for v in (3.0, 2.0, 2.5, 2.4)]
    [False, False, False, True]
    >>> stopper.best, stopper.best_step
    (2.0, 2)
    >>> stopper.restore(model)
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0) -> None:
        self.patience = _validate.positive_int("patience", patience)
        self.min_delta = _validate.real("min_delta", min_delta, minimum=0)
        self.best = math.inf
        self.best_step: Optional[int] = None
        self.best_state: Optional[dict[str, np.ndarray]] = None
        self.checks = 0
        self._since_best = 0

    def step(self, metric: float, model: Any) -> bool:
        """Record one validation result; True when training should stop.

        Parameters
        ----------
        metric : float
            The validation result, lower is better; NaN counts as no improvement.
        model : module
            Its state_dict() is copied when the metric improves.

        Returns
        -------
        bool

        Raises
        ------
        TypeError
            metric is not a number.
        """
        try:
            metric = float(metric)  # NaN counts as no improvement, as a diverged run should
        except (TypeError, ValueError):
            raise TypeError(f"metric: expected a number, got {metric!r}") from None
        self.checks += 1
        if metric < self.best - self.min_delta:
            self.best, self.best_step, self._since_best = metric, self.checks, 0
            self.best_state = model.state_dict()
        else:
            self._since_best += 1
        return self._since_best >= self.patience

    def restore(self, model: Any) -> None:
        """Load the best parameters seen back into the model.

        Parameters
        ----------
        model : module
            The model given to `step`, or one of its structure.

        Raises
        ------
        RuntimeError
            No finite validation result has been recorded.
        """
        if self.best_state is None:
            raise RuntimeError("EarlyStopping.restore: no finite validation result has been recorded")
        model.load_state_dict(self.best_state)


def _progress(iterable, progress, desc):
    if not progress:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (the "demo" extra); train without a bar
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def fit(epoch_fn: Callable[[int], float], epochs: int, validate: Optional[Callable[[], float]] = None,
        model: Any = None, early_stopping: Optional[EarlyStopping] = None, progress: bool = True,
        desc: str = "training") -> list[dict[str, Any]]:
    """Run `epoch_fn(epoch) -> mean training loss` for up to `epochs` epochs, with a
    progress bar (tqdm, when installed) showing the loss. With `validate() -> metric`
    and an `EarlyStopping`, stop when the metric stalls and restore the model's best
    parameters. Returns a list of per-epoch dicts {"epoch", "loss", "val"}.

    Parameters
    ----------
    epoch_fn : callable, int -> float
        Trains one epoch, returning its mean loss.
    epochs : int
        The most epochs run, >= 1.
    validate : callable, () -> float, optional
        The validation metric after each epoch, lower is better.
    model : module, optional
        Needed with early_stopping, which restores its best parameters at the end.
    early_stopping : EarlyStopping, optional
    progress : bool, default True
        Whether to show a progress bar (when tqdm is installed).
    desc : str, default "training"
        The bar's label.

    Returns
    -------
    history : list of dict
        {"epoch": int, "loss": float, "val": float or None}, one per epoch run.

    Raises
    ------
    ValueError, TypeError
        epochs not a positive int, or early_stopping without validate and model.

    Examples
    --------
    >>> import rnncore as rc
    >>> history = rc.train.fit(lambda epoch: 1.0 / (epoch + 1), epochs=3, progress=False)
    >>> [round(h["loss"], 3) for h in history]
    [1.0, 0.5, 0.333]
    """
    epochs = _validate.positive_int("epochs", epochs)
    if early_stopping is not None and (validate is None or model is None):
        raise ValueError("early_stopping: expected validate and model to be given with it, got None")
    history = []
    bar = _progress(range(epochs), progress, desc)
    for epoch in bar:
        record = {"epoch": epoch, "loss": float(epoch_fn(epoch)), "val": None}
        if validate is not None:
            record["val"] = float(validate())
        history.append(record)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch" and v is not None})
        if early_stopping is not None and early_stopping.step(record["val"], model):
            break
    if hasattr(bar, "close"):
        bar.close()
    if early_stopping is not None and early_stopping.best_state is not None:
        early_stopping.restore(model)
    return history


def minibatches(count: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled index arrays covering range(count), `batch_size` at a time (the last may
    be smaller), drawn from the numpy Generator `rng`.

    Parameters
    ----------
    count : int
        The number of samples, >= 1.
    batch_size : int
        Indices per batch, >= 1.
    rng : np.random.Generator

    Returns
    -------
    batches : list of np.ndarray of int

    Raises
    ------
    ValueError, TypeError
        count or batch_size not a positive int, or rng not a Generator.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> batches = rc.train.minibatches(5, 2, np.random.default_rng(0))
    >>> [len(b) for b in batches], sorted(np.concatenate(batches).tolist())
    ([2, 2, 1], [0, 1, 2, 3, 4])
    """
    count = _validate.positive_int("count", count)
    batch_size = _validate.positive_int("batch_size", batch_size)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got "
                        f"{type(rng).__name__}")
    order = rng.permutation(count)
    return [order[i:i + batch_size] for i in range(0, count, batch_size)]


class _Carried:
    """A model without streams, stepped by calling it in eval mode with its states
    carried from call to call (the mode it was in is put back by `close`)."""

    def __init__(self, model, states):
        self.model, self.states = model, states
        self.was_training = getattr(model, "training", True)
        model.eval()

    def __call__(self, x):
        y, self.states = self.model(x, self.states)
        return y

    def step(self, x_t):
        return self(x_t[None])[0]

    def close(self):
        self.model.train(self.was_training)


def _stepping(model, batch_size, states):
    """(stepping, close): the model's chunk and step calls with the state carried, on a
    stream where the model makes one (its weights packed once, then microseconds a step),
    else `_Carried`; and what to call when done."""
    if not hasattr(model, "stream"):
        carried = _Carried(model, states)
        return carried, carried.close
    stream = model.stream(batch_size)
    if states is not None:
        stream.reset(states)
    return stream, lambda: None


def generate(model: Any, prompt: ArrayLike, length: int, temperature: float = 1.0,
             seed: Union[int, np.random.Generator, None] = None, states: Optional[list] = None) -> np.ndarray:
    """Sample `length` tokens after `prompt` from a model mapping integer tokens (T, B)
    to logits (T, B, V), one step at a time with the recurrent state carried along.
    temperature > 0 samples from softmax(logits / temperature); temperature=0 is greedy
    (the most likely token every step). Returns the generated tokens as an int64 array.

    Parameters
    ----------
    model : model
        Maps integer tokens (T, B) to logits (T, B, V); run in eval mode, its mode
        restored after.
    prompt : array_like of int, (P,)
        The tokens to start from, P >= 1.
    length : int
        Tokens to generate, >= 0.
    temperature : float >= 0, default 1.0
        0: greedy.
    seed : int or np.random.Generator, optional
        Seeds the sampling.
    states : list, optional
        The model's initial states; None: zeros.

    Returns
    -------
    tokens : np.ndarray of int64, (length,)

    Raises
    ------
    ValueError, TypeError
        A prompt not a non-empty 1-d integer sequence, or length, temperature or seed
        out of range.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> model = rc.Sequential(rc.Embedding(5, 3, seed=0), rc.GRU(3, 4, seed=1), rc.Linear(4, 5, seed=2))
    >>> tokens = rc.train.generate(model, [1, 2], length=4, temperature=0)
    >>> tokens.shape, tokens.dtype
    ((4,), dtype('int64'))
    """
    prompt = _validate.to_numpy(prompt, "prompt")
    if prompt.ndim != 1 or prompt.size == 0 or prompt.dtype.kind not in "iu":
        raise ValueError(f"prompt: expected a non-empty 1-d sequence of integer tokens, got "
                         f"shape {prompt.shape} dtype {prompt.dtype}")
    length = _validate.positive_int("length", length, minimum=0)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0 (0: greedy), got {temperature!r}")
    rng = np.random.default_rng(_validate.seed(seed))
    stepping, close = _stepping(model, 1, states)
    try:
        last = stepping(prompt[:, None])[-1, 0]
        tokens = np.empty(length, dtype=np.int64)
        token_in = np.empty(1, dtype=np.int64)
        for step in range(length):
            last = last.astype(np.float64)
            if temperature == 0:
                token = int(np.argmax(last))
            else:
                scaled = (last - last.max()) / temperature
                probs = np.exp(scaled)
                # Generator.choice(len(p), p=p)'s own draw (the same tokens), without its
                # checks of p, which cost twice the rest of a step
                cdf = (probs / probs.sum()).cumsum()
                cdf /= cdf[-1]
                token = int(cdf.searchsorted(rng.random(), side="right"))
            tokens[step] = token_in[0] = token
            if step + 1 < length:
                last = stepping.step(token_in)[0]
    finally:
        close()
    return tokens


@filled(_DOCS)
def forecast(model: Any, history: ArrayLike, steps: int, states: Optional[list] = None) -> np.ndarray:
    """Run a one-step-ahead model (x_t -> x_{t+1}, features in = features out) over the
    time-major history (T, B, F) and then feed its own predictions back for `steps`
    more steps. Returns the forecasts (steps, B, F).

    Parameters
    ----------
    model : model
        One-step-ahead, features in = features out; run in eval mode, its mode restored
        after.
    history : array_like, (T, B, F)
        The series so far, time-major, T >= 1.
    steps : int
        Steps to forecast, >= 1.
    states : list, optional
        The model's initial states; None: zeros.

    Returns
    -------
    forecasts : np.ndarray, (steps, B, F)

    Raises
    ------
    ValueError, TypeError
        history not (T, B, F), or steps not a positive int.

    Examples
    --------
    %(model_example)s
    >>> rc.train.forecast(model, np.zeros((6, 2, 1), dtype=np.float32), steps=3).shape
    (3, 2, 1)
    """
    history = _validate.to_numpy(history, "history")
    if history.ndim != 3 or history.shape[0] < 1:
        raise ValueError(f"history: expected shape (T, B, F) with T >= 1, got {history.shape}")
    steps = _validate.positive_int("steps", steps)
    stepping, close = _stepping(model, history.shape[1], states)
    try:
        y = stepping(history)[-1]
        out = np.empty((steps,) + history.shape[1:], dtype=history.dtype)
        for step in range(steps):
            out[step] = y
            if step + 1 < steps:
                y = stepping.step(out[step])
    finally:
        close()
    return out
