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

from . import _validate
from .clip import clip_grad_norm_

__all__ = ["train_step", "truncated_bptt", "EarlyStopping", "fit", "minibatches", "generate", "forecast"]


def train_step(model: Any, loss_fn: Any, optimizer: Any, x: ArrayLike, target: ArrayLike, states: Optional[list] = None,
               lengths: Optional[ArrayLike] = None, max_norm: Optional[float] = None,
               mask: Optional[ArrayLike] = None) -> tuple[float, list]:
    """Zero the gradients, forward, loss, backward, clip the global gradient norm to
    `max_norm` (if given), and one optimizer step (if given; None leaves the gradients
    accumulated in the model). Returns (loss, final states)."""
    model.train()
    model.zero_grad()
    y, finals = model(x, states, lengths)
    loss = loss_fn(y, target) if mask is None else loss_fn(y, target, mask)
    model.backward(loss_fn.backward())
    if max_norm is not None:
        clip_grad_norm_(model, max_norm)
    if optimizer is not None:
        optimizer.step()
    return loss, finals


def truncated_bptt(model: Any, loss_fn: Any, optimizer: Any, x: np.ndarray, target: np.ndarray, chunk: int,
                   states: Optional[list] = None, max_norm: Optional[float] = None) -> tuple[float, Any]:
    """One pass over a long time-major series x (T, B, ...) with targets (T, B, ...) in
    chunks of `chunk` steps. Each chunk starts from the previous chunk's final state (the
    forward sees the whole history) but back-propagates within itself only, then steps
    the optimizer; with chunk >= T this is one step of full BPTT. With optimizer=None
    the chunks' gradients accumulate instead. Returns (mean loss per step, final states)."""
    chunk = _validate.positive_int("chunk", chunk)
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
        y, states = model(x[start:stop], states)
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
        stopper.restore(model)"""

    def __init__(self, patience: int = 5, min_delta: float = 0.0) -> None:
        self.patience = _validate.positive_int("patience", patience)
        self.min_delta = _validate.real("min_delta", min_delta, minimum=0)
        self.best = math.inf
        self.best_step: Optional[int] = None
        self.best_state: Optional[dict[str, np.ndarray]] = None
        self.checks = 0
        self._since_best = 0

    def step(self, metric: float, model: Any) -> bool:
        """Record one validation result; True when training should stop."""
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
        """Load the best parameters seen back into the model."""
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
    parameters. Returns a list of per-epoch dicts {"epoch", "loss", "val"}."""
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
    be smaller), drawn from the numpy Generator `rng`."""
    count = _validate.positive_int("count", count)
    batch_size = _validate.positive_int("batch_size", batch_size)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got "
                        f"{type(rng).__name__}")
    order = rng.permutation(count)
    return [order[i:i + batch_size] for i in range(0, count, batch_size)]


def _inference(model):
    """Switch the model to eval mode; returns whether it was training."""
    was_training = getattr(model, "training", True)
    model.eval()
    return was_training


def generate(model: Any, prompt: ArrayLike, length: int, temperature: float = 1.0,
             seed: Union[int, np.random.Generator, None] = None, states: Optional[list] = None) -> np.ndarray:
    """Sample `length` tokens after `prompt` from a model mapping integer tokens (T, B)
    to logits (T, B, V), one step at a time with the recurrent state carried along.
    temperature > 0 samples from softmax(logits / temperature); temperature=0 is greedy
    (the most likely token every step). Returns the generated tokens as an int64 array."""
    prompt = _validate.to_numpy(prompt, "prompt")
    if prompt.ndim != 1 or prompt.size == 0 or prompt.dtype.kind not in "iu":
        raise ValueError(f"prompt: expected a non-empty 1-d sequence of integer tokens, got "
                         f"shape {prompt.shape} dtype {prompt.dtype}")
    length = _validate.positive_int("length", length, minimum=0)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0 (0: greedy), got {temperature!r}")
    rng = np.random.default_rng(_validate.seed(seed))
    was_training = _inference(model)
    try:
        logits, states = model(prompt[:, None], states)
        tokens = np.empty(length, dtype=np.int64)
        for step in range(length):
            last = logits[-1, 0].astype(np.float64)
            if temperature == 0:
                token = int(np.argmax(last))
            else:
                scaled = (last - last.max()) / temperature
                probs = np.exp(scaled)
                token = int(rng.choice(len(probs), p=probs / probs.sum()))
            tokens[step] = token
            logits, states = model(np.array([[token]]), states)
    finally:
        model.train(was_training)
    return tokens


def forecast(model: Any, history: ArrayLike, steps: int, states: Optional[list] = None) -> np.ndarray:
    """Run a one-step-ahead model (x_t -> x_{t+1}, features in = features out) over the
    time-major history (T, B, F) and then feed its own predictions back for `steps`
    more steps. Returns the forecasts (steps, B, F)."""
    history = _validate.to_numpy(history, "history")
    if history.ndim != 3 or history.shape[0] < 1:
        raise ValueError(f"history: expected shape (T, B, F) with T >= 1, got {history.shape}")
    steps = _validate.positive_int("steps", steps)
    was_training = _inference(model)
    try:
        y, states = model(history, states)
        out = np.empty((steps,) + history.shape[1:], dtype=history.dtype)
        for step in range(steps):
            out[step] = y[-1]
            if step + 1 < steps:
                y, states = model(out[step:step + 1], states)
    finally:
        model.train(was_training)
    return out
