"""Forecasting a series some steps ahead: a recurrent `Forecaster`, the baselines it is
measured against (`Persistence`, `SeasonalNaive`, `LinearAR`), rolling-origin
`backtest`, and `read_csv` for a user's own data.

Every estimator follows scikit-learn's conventions: the constructor stores its arguments
as given, `fit(series)` learns from the data and returns the estimator, `predict(horizon)`
forecasts the steps after the data it was fitted on, and `get_params` / `set_params`
expose the constructor's arguments (so `sklearn.base.clone` and model-selection code work
without scikit-learn being a dependency).

A series is an array of shape (n,), or (n, k) with the forecast column chosen by
`target` and the other columns read as inputs (covariates).

    >>> import numpy as np, rnncore as rc
    >>> t = np.arange(240)
    >>> y = 10 + 0.05 * t + np.sin(2 * np.pi * t / 12)
    >>> model = rc.forecasting.Forecaster(horizon=12, season=12, epochs=20).fit(y)
    >>> model.predict().shape
    (12,)
    >>> scores = model.backtest(y, origins=3)      # refits a copy at each origin
    >>> len(scores["rmse"]), scores["forecasts"].shape
    (3, (3, 12))
"""
from __future__ import annotations

import csv
import inspect
import math
import warnings
from collections import namedtuple
from pathlib import Path
from typing import Any, Optional, Sequence, Union
import os

import numpy as np
from numpy.typing import ArrayLike

from ..core.layers import GRU, LSTM, RNN
from .losses import MSELoss
from .nn import LastStep, Linear, Sequential
from .optim import Adam
from .train import EarlyStopping, fit as fit_epochs, minibatches, train_step

__all__ = ["Forecaster", "Persistence", "SeasonalNaive", "LinearAR", "backtest", "read_csv", "Table",
           "MissingValueError", "rmse", "mae", "infer_season", "mackey_glass"]

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
BASES = ("ar", "seasonal_naive", "persistence")
# fewest training windows a Forecaster accepts: below this a network has nothing to learn from
MIN_WINDOWS = 8
MISSING = {"", "na", "nan", "n/a", "null", "none", "-", "?"}


def rmse(forecast: ArrayLike, actual: ArrayLike) -> float:
    """Root mean squared error of `forecast` against `actual` (same shape)."""
    return float(np.sqrt(np.mean((np.asarray(forecast, float) - np.asarray(actual, float)) ** 2)))


def mae(forecast: ArrayLike, actual: ArrayLike) -> float:
    """Mean absolute error of `forecast` against `actual` (same shape)."""
    return float(np.mean(np.abs(np.asarray(forecast, float) - np.asarray(actual, float))))


def _int(name, value, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        expected = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return int(value)


def _as_series(series, target=0):
    """(values (n, k) float64, target column index); refuses what cannot be forecast."""
    values = np.asarray(series)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"series: expected numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"series: expected shape (n,) or (n, k), got {np.shape(series)}")
    if not np.isfinite(values).all():
        row = int(np.argwhere(~np.isfinite(values))[0, 0])
        raise ValueError(f"series: expected finite values, got NaN or Inf at row {row} "
                         "(fill gaps first, e.g. read_csv(..., fill='linear'))")
    target = _int("target", target, minimum=0)
    if target >= values.shape[1]:
        raise ValueError(f"target: expected a column index in [0, {values.shape[1] - 1}], got {target}")
    return values, target


class _Estimator:
    """get_params / set_params / repr from the constructor's signature, and backtest."""

    @classmethod
    def _param_names(cls):
        signature = inspect.signature(cls.__init__)
        return [name for name, p in signature.parameters.items()
                if name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments by name; with deep=True also those of nested
        estimators, as `name__argument`."""
        params = {}
        for name in self._param_names():
            value = getattr(self, name)
            params[name] = value
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                params.update((f"{name}__{key}", item) for key, item in value.get_params(deep=True).items())
        return params

    def set_params(self, **params: Any) -> _Estimator:
        """Set constructor arguments (`name__argument` reaches a nested estimator);
        returns self. Takes effect at the next fit."""
        names = self._param_names()
        nested = {}
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in names:
                raise ValueError(f"set_params: expected one of {names}, got {name!r}")
            if sub:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            inner = getattr(self, name)
            if not hasattr(inner, "set_params"):
                raise ValueError(f"set_params: {name!r} is {inner!r}, which has no parameters to set")
            inner.set_params(**sub_params)
        return self

    def __repr__(self):
        defaults = inspect.signature(type(self).__init__).parameters

        def is_default(name):
            value, default = getattr(self, name), defaults[name].default
            return value is default or (type(value) is type(default) and value == default)

        shown = [f"{name}={getattr(self, name)!r}" for name in self._param_names() if not is_default(name)]
        return f"{type(self).__name__}({', '.join(shown)})"

    def _clone(self):
        params = self.get_params(deep=False)
        return type(self)(**{k: v._clone() if isinstance(v, _Estimator) else v for k, v in params.items()})

    def _check_fitted(self):
        if not hasattr(self, "history_"):
            raise RuntimeError(f"{type(self).__name__}.predict: call fit(series) first")

    def backtest(self, series: ArrayLike, origins: int = 5, horizon: Optional[int] = None,
                 step: Optional[int] = None) -> dict[str, Any]:
        """Rolling-origin evaluation; see `backtest` (the module function)."""
        return backtest(self, series, origins=origins, horizon=horizon, step=step)


class _Baseline(_Estimator):
    """A baseline fitted on one column; subclasses give `_fit(y)` and `_forecast(y, ends, steps)`."""

    def _min_history(self):
        """The fewest values the baseline needs before an origin."""
        return 1

    def fit(self, series: ArrayLike, dates: Optional[ArrayLike] = None) -> _Baseline:
        """Learn from `series` ((n,), or (n, k) with column `target` forecast); returns self."""
        values, target = _as_series(series, getattr(self, "target", 0))
        y = values[:, target]
        self._fit(y)
        self.history_ = y
        self.dates_ = None if dates is None else np.asarray(dates)
        return self

    def predict(self, horizon: int) -> np.ndarray:
        """The `horizon` values after the fitted series, shape (horizon,)."""
        self._check_fitted()
        horizon = _int("horizon", horizon)
        return self._forecast(self.history_, np.array([len(self.history_)]), horizon)[0]

    def _needs(self, y, count, what):
        if len(y) < count:
            raise ValueError(f"series: expected at least {count} values for {what}, got {len(y)}")


class Persistence(_Baseline):
    """Every future value equals the last known one."""

    def __init__(self, target: int = 0) -> None:
        self.target = target

    def _fit(self, y):
        self._needs(y, 1, repr(self))

    def _forecast(self, y, ends, steps):
        return np.repeat(y[ends - 1][:, None], steps, axis=1)


class SeasonalNaive(_Baseline):
    """Each future value equals the value one season before it (the last known season
    repeated); with drift=True plus the mean season-over-season change of the fitted
    series per season ahead: y[n + k] = y[n - s + (k % s)] + (k // s + 1) * d, k >= 0,
    d = mean(y[t] - y[t - s])."""

    def __init__(self, season: int = 12, drift: bool = False, target: int = 0) -> None:
        self.season = season
        self.drift = drift
        self.target = target

    def _min_history(self):
        return _int("season", self.season)

    def _fit(self, y):
        season = _int("season", self.season)
        self._needs(y, season + 1 if self.drift else season, repr(self))
        self.drift_ = float(np.mean(y[season:] - y[:-season])) if self.drift else 0.0

    def _forecast(self, y, ends, steps):
        season = int(self.season)
        k = np.arange(steps)
        return y[ends[:, None] - season + k % season] + (k // season + 1) * self.drift_


class LinearAR(_Baseline):
    """Autoregression of order p with an intercept, fitted by least squares and forecast
    recursively: x[t] = c + a_1 x[t-1] + ... + a_p x[t-p]. With seasonal=s the model is
    fitted to the season-over-season changes x[t] = y[t] - y[t - s] (the seasonal
    difference) and the forecasts are integrated back; with seasonal=None, x = y."""

    def __init__(self, p: int = 12, seasonal: Optional[int] = None, target: int = 0) -> None:
        self.p = p
        self.seasonal = seasonal
        self.target = target

    def _min_history(self):
        return _int("p", self.p) + (_int("seasonal", self.seasonal, allow_none=True) or 0)

    def _transform(self, y):
        s = self.seasonal
        return y if s is None else y[s:] - y[:-s]

    def _fit(self, y):
        p = _int("p", self.p)
        _int("seasonal", self.seasonal, allow_none=True)
        # at least two equations per coefficient, or least squares only interpolates noise
        self._needs(y, self._min_history() + 2 * (p + 1), repr(self))
        x = self._transform(y)
        lags = np.column_stack([np.ones(len(x) - p)] + [x[p - j:len(x) - j] for j in range(1, p + 1)])
        self.coef_ = np.linalg.lstsq(lags, x[p:], rcond=None)[0]

    def _forecast(self, y, ends, steps):
        p, s = int(self.p), self.seasonal
        x = self._transform(y)
        x_ends = ends if s is None else ends - s
        # x_buffer[:, -j] = x[t - j] for each origin t; new values are appended on the right
        x_buffer = x[x_ends[:, None] + np.arange(-p, 0)]
        y_buffer = None if s is None else y[ends[:, None] + np.arange(-s, 0)]
        out = np.empty((len(ends), steps))
        for k in range(steps):
            x_next = self.coef_[0] + x_buffer[:, ::-1][:, :p] @ self.coef_[1:]
            x_buffer = np.concatenate([x_buffer[:, 1:], x_next[:, None]], axis=1)
            if s is None:
                out[:, k] = x_next
            else:
                out[:, k] = y_buffer[:, k - s] + x_next if k < s else out[:, k - s] + x_next
        return out


class Forecaster(_Estimator):
    """A recurrent network that forecasts the next `horizon` values at once, as a
    correction to a strong linear baseline.

    At each origin t the network reads the last `window` steps (the target relative to
    its last value y[t-1], divided by the spread of its step-to-step changes, and any
    covariate columns standardised), and its head outputs the `horizon` residuals
    y[t:t+horizon] - base forecast, in units of their spread; an output of zero is the
    base forecast itself. The base (default `base="ar"`: `LinearAR(p=ar_order)`, with
    ar_order 2*season, or the window without a season) and every scale are learnt on the
    training part only. `fit` holds out the last `horizon` values for early stopping;
    `ensemble` networks from consecutive seeds are averaged.

    Parameters: cell "lstm" | "gru" | "rnn"; window (None: max(2*season, horizon), capped
    by what the series allows; a window shorter than the season warns); horizon; season
    (None: no seasonal structure assumed); hidden_size; epochs (most; early stopping
    ends sooner); seed; base "ar" | "seasonal_naive" | "persistence" or a baseline
    estimator; ar_order; ensemble; target (the forecast column of a 2-d series; the
    others are inputs known up to each origin, so `predict` needs nothing more);
    learning_rate, batch_size, patience, max_grad_norm; verbose (a progress bar).
    """

    def __init__(self, cell: str = "lstm", window: Optional[int] = None, horizon: int = 12,
                 season: Optional[int] = None, hidden_size: int = 16, epochs: int = 200, seed: int = 0,
                 base: Union[str, _Baseline] = "ar", ar_order: Optional[int] = None, ensemble: int = 3,
                 target: int = 0, learning_rate: float = 0.005, batch_size: int = 32, patience: int = 30,
                 max_grad_norm: float = 1.0, verbose: bool = False) -> None:
        self.cell = cell
        self.window = window
        self.horizon = horizon
        self.season = season
        self.hidden_size = hidden_size
        self.epochs = epochs
        self.seed = seed
        self.base = base
        self.ar_order = ar_order
        self.ensemble = ensemble
        self.target = target
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.patience = patience
        self.max_grad_norm = max_grad_norm
        self.verbose = verbose

    # -- configuration, checked at fit time (the constructor stores arguments as given)

    def _checked(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {self.cell!r}")
        if not (isinstance(self.base, _Baseline) or self.base in BASES):
            raise ValueError(f"base: expected one of {list(BASES)} or a baseline estimator, got {self.base!r}")
        for name in ("horizon", "hidden_size", "epochs", "ensemble", "batch_size", "patience"):
            _int(name, getattr(self, name))
        _int("season", self.season, allow_none=True)
        _int("window", self.window, allow_none=True)
        _int("ar_order", self.ar_order, allow_none=True)
        _int("seed", self.seed, minimum=0)
        for name in ("learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}: expected a number > 0, got {value!r}")

    def _make_base(self):
        if isinstance(self.base, _Baseline):
            return self.base._clone()
        season = self.season
        if self.base == "persistence":
            return Persistence()
        if self.base == "seasonal_naive":
            if season is None:
                raise ValueError("base: expected a season for 'seasonal_naive', got season=None")
            return SeasonalNaive(season, drift=True)
        return LinearAR(self._ar_order)

    def _choose_window(self, train_length):
        horizon, season = self.horizon, self.season
        most = train_length - horizon - MIN_WINDOWS + 1
        if self.window is not None:
            window = self.window
            if window > most:
                raise ValueError(f"window: expected at most {most} for a series of {train_length + horizon} "
                                 f"values and horizon {horizon}, got {window}")
        else:
            window = min(max(2 * season if season else 0, horizon, 8), max(most, 1))
        if season and window < season:
            warnings.warn(f"window={window} is shorter than season={season}: the network never sees a whole "
                          "season; give a longer series or a longer window", UserWarning, stacklevel=3)
        return window

    # -- data preparation

    def _inputs(self, values, ends):
        """Network inputs (window, len(ends), k) for the origins `ends`."""
        steps = ends[None, :] + np.arange(-self._window, 0)[:, None]   # (window, B)
        y = values[:, self._target]
        level = (y[steps] - y[ends - 1][None, :]) / self._level_scale
        columns = [level[..., None]]
        if self._covariates:
            columns.append((values[steps][..., self._covariates] - self._cov_mean) / self._cov_scale)
        return np.concatenate(columns, axis=-1).astype(np.float32)

    def fit(self, series: ArrayLike, dates: Optional[ArrayLike] = None) -> Forecaster:
        """Learn from `series` ((n,) or (n, k)); `dates` (n,), optional, are kept for the
        caller (`dates_`). Returns self."""
        self._checked()
        values, self._target = _as_series(series, self.target)
        n, horizon = len(values), self.horizon
        train_length = n - horizon                       # the last horizon values validate
        if train_length - horizon < MIN_WINDOWS:
            raise ValueError(f"series: expected at least {2 * horizon + MIN_WINDOWS + 1} values for horizon "
                             f"{horizon}, got {n}")
        self._window = self._choose_window(train_length)
        self._ar_order = self.ar_order
        if self._ar_order is None:
            # four equations per coefficient at least: a long season on a short series
            # would otherwise make the autoregression fit noise
            self._ar_order = max(1, min(2 * self.season if self.season else self._window, train_length // 4 - 1))
        y = values[:, self._target]
        train_y = y[:train_length]
        self._covariates = [c for c in range(values.shape[1]) if c != self._target]
        self._level_scale = float(np.std(np.diff(train_y))) or 1.0
        if self._covariates:
            cov = values[:train_length, self._covariates]
            self._cov_mean, self._cov_scale = cov.mean(axis=0), cov.std(axis=0)
            self._cov_scale[self._cov_scale == 0] = 1.0

        base = self._make_base().fit(train_y)
        first = max(self._window, base._min_history())
        ends = np.arange(first, train_length - horizon + 1)
        if len(ends) < MIN_WINDOWS:
            raise ValueError(f"series: expected at least {first + 2 * horizon + MIN_WINDOWS - 1} values for "
                             f"window {self._window}, horizon {horizon} and {base!r}, got {n}")
        targets = y[ends[:, None] + np.arange(horizon)]
        residuals = targets - base._forecast(y, ends, horizon)
        self._residual_scale = float(np.std(residuals)) or 1.0
        x_train = self._inputs(values, ends)
        r_train = (residuals / self._residual_scale).astype(np.float32)
        valid_end = np.array([train_length])
        x_valid = self._inputs(values, valid_end)
        base_valid = base._forecast(y, valid_end, horizon)[0]
        actual_valid = y[train_length:]

        self.networks_ = []
        self.validation_rmse_ = []
        for member in range(self.ensemble):
            # members' seeds a prime apart: no member's layer seeds (seed, seed + 1) meet another's
            network, best = self._train_one(self.seed + member * 7919, x_train, r_train,
                                            lambda net: rmse(base_valid + self._correction(net, x_valid)[0],
                                                             actual_valid))
            self.networks_.append(network)
            self.validation_rmse_.append(best)
        # the base sees every value for the final forecast; the networks' corrections stay
        self.base_ = self._make_base().fit(y)
        self.history_ = values
        self.dates_ = None if dates is None else np.asarray(dates)
        self.window_ = self._window
        return self

    def _train_one(self, seed, x_train, r_train, validation_rmse):
        inputs, hidden = x_train.shape[-1], self.hidden_size
        network = Sequential(CELLS[self.cell](inputs, hidden, seed=seed), LastStep(),
                             Linear(hidden, self.horizon, seed=seed + 1))
        # a small head starts the network near "no correction", i.e. at the base forecast
        network[2].parameters()["weight"] *= 0.1
        optimizer = Adam(network, lr=self.learning_rate)
        loss_fn = MSELoss()
        rng = np.random.default_rng(seed)

        def epoch(_):
            losses = [train_step(network, loss_fn, optimizer, x_train[:, batch], r_train[batch],
                                 max_norm=self.max_grad_norm)[0]
                      for batch in minibatches(x_train.shape[1], self.batch_size, rng)]
            return float(np.mean(losses))

        stopper = EarlyStopping(patience=self.patience)
        fit_epochs(epoch, self.epochs, validate=lambda: validation_rmse(network), model=network,
                   early_stopping=stopper, progress=self.verbose, desc=f"{self.cell} forecaster")
        return network, stopper.best

    def _correction(self, network, x):
        network.eval()
        out, _ = network(x)
        return out.astype(np.float64) * self._residual_scale

    def predict(self, horizon: Optional[int] = None) -> np.ndarray:
        """The next `horizon` values (default and most: the fitted horizon) after the
        fitted series, shape (horizon,). Covariates need no future values: the networks
        read them only up to the end of the fitted series."""
        self._check_fitted()
        horizon = self.horizon if horizon is None else _int("horizon", horizon)
        if horizon > self.horizon:
            raise ValueError(f"horizon: expected at most the fitted horizon {self.horizon}, got {horizon}")
        end = np.array([len(self.history_)])
        x = self._inputs(self.history_, end)
        correction = np.mean([self._correction(net, x)[0] for net in self.networks_], axis=0)
        base = self.base_._forecast(self.history_[:, self._target], end, self.horizon)[0]
        return (base + correction)[:horizon]


def backtest(estimator: Any, series: ArrayLike, origins: int = 5, horizon: Optional[int] = None,
             step: Optional[int] = None) -> dict[str, Any]:
    """Rolling-origin evaluation of `estimator` on `series`: at each of `origins` origins
    t (the last at len(series) - horizon, the others `step` apart before it, default
    step = horizon: test stretches that do not overlap), a fresh copy of the estimator
    (same parameters) is fitted on series[:t] and forecasts series[t:t + horizon]; the
    estimator itself is left as it was.

    Returns a dict: "origins" (the indices t), "forecasts" and "actual" (origins,
    horizon), per-origin "rmse" and "mae" lists, their "mean_rmse", "std_rmse",
    "mean_mae", "std_mae" (spread: the standard deviation over origins), and
    "overall_rmse", "overall_mae" over every forecast value."""
    values, target = _as_series(series, getattr(estimator, "target", 0))
    if horizon is None:
        horizon = getattr(estimator, "horizon", None)
        if horizon is None:
            raise ValueError(f"horizon: expected an integer >= 1 for {estimator!r}, got None")
    horizon = _int("horizon", horizon)
    origins = _int("origins", origins)
    step = horizon if step is None else _int("step", step)
    n = len(values)
    starts = [n - horizon - step * k for k in range(origins - 1, -1, -1)]
    if starts[0] < 1:
        raise ValueError(f"origins: expected at most {(n - horizon - 1) // step + 1} origins {step} steps apart "
                         f"with horizon {horizon} on {n} values, got {origins}")
    forecasts = np.empty((origins, horizon))
    actual = np.stack([values[t:t + horizon, target] for t in starts])
    for row, t in enumerate(starts):
        fitted = estimator._clone()
        try:
            fitted.fit(values[:t])
        except ValueError as error:
            raise ValueError(f"backtest: the origin at index {t} leaves {t} values to fit on: {error}") from None
        forecasts[row] = fitted.predict(horizon)
    rmses = [rmse(f, a) for f, a in zip(forecasts, actual)]
    maes = [mae(f, a) for f, a in zip(forecasts, actual)]
    return {"origins": starts, "forecasts": forecasts, "actual": actual, "rmse": rmses, "mae": maes,
            "mean_rmse": float(np.mean(rmses)), "std_rmse": float(np.std(rmses)),
            "mean_mae": float(np.mean(maes)), "std_mae": float(np.std(maes)),
            "overall_rmse": rmse(forecasts, actual), "overall_mae": mae(forecasts, actual)}


# -- CSV input

Table = namedtuple("Table", "values columns dates date_column")
Table.__doc__ = """read_csv's result: values (n, k) float64 in the order of `columns`; dates (n,)
numpy datetime64, or None without a date column; date_column its header name (or None)."""


class MissingValueError(ValueError):
    """A CSV cell with no value; `path`, `line` (1-based) and `column` say where."""

    def __init__(self, message: str, path: Union[str, os.PathLike], line: int, column: str) -> None:
        super().__init__(message)
        self.path, self.line, self.column = path, line, column


def _parse_date(cell):
    # an ISO date or datetime; a bare number (a year, an index) stays a number
    if not any(ch in cell for ch in "-:T"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns about (and drops) a trailing "Z"
        try:
            return np.datetime64(cell.strip())
        except ValueError:
            return None


def _number(cell, decimal_comma):
    try:
        return float(cell)
    except ValueError:
        if decimal_comma and cell.count(",") == 1:
            return float(cell.replace(",", "."))
        raise


def read_csv(path: Union[str, os.PathLike], columns: Optional[Sequence[Union[str, int]]] = None,
             date_column: Union[str, int, None] = "auto", delimiter: Optional[str] = None,
             fill: Optional[str] = None) -> Table:
    """Read a series from a CSV file with a header row.

    columns: names or 0-based indices (negative from the end) of the numeric columns to
    read, in order (None: every column but the date column). date_column: a name or index, "auto" (the first
    column when every cell in it is an ISO date or datetime such as 2001-03, 2001-03-05
    or 2001-03-05T14:00, parsed with numpy's datetime64), or None. delimiter: None sniffs
    one of , ; tab | (csv.Sniffer); with ; or tab a decimal comma is read too. fill: None
    refuses a missing cell (empty, NA, NaN, null) with a `MissingValueError` naming its
    line and column; "linear" interpolates between the neighbouring values, "ffill"
    repeats the last known one (leading gaps take the first known value). Rows are put in
    date order when the dates are not; repeated dates are an error.

    Returns a `Table` (values, columns, dates, date_column)."""
    path = Path(path)
    if fill not in (None, "linear", "ffill"):
        raise ValueError(f"fill: expected None, 'linear' or 'ffill', got {fill!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise OSError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a UTF-8 text file ({error.reason})") from None
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    try:
        rows = [(line, row) for line, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1)
                if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise ValueError(f"{path} is not a readable CSV file ({error})") from None
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header row and data rows, got {len(rows)} row(s)")
    header = [name.strip() for name in rows[0][1]]
    body = rows[1:]

    def index_of(what, value):
        if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.lstrip("-").isdigit()
                                                     and value not in header):
            if not -len(header) <= int(value) < len(header):
                raise ValueError(f"{what}: expected an index in [0, {len(header) - 1}] (or from the end, "
                                 f"-1 the last) or a name in {header}, got {value}")
            return int(value) % len(header)
        if value not in header:
            raise ValueError(f"{what}: expected a name in {header} or a 0-based index, got {value!r}")
        return header.index(value)

    def cell(row, index):
        return row[index].strip() if index < len(row) else ""

    dates, date_index = None, None
    if date_column == "auto":
        parsed = [_parse_date(cell(row, 0)) for _, row in body]
        if all(d is not None for d in parsed):
            date_index, dates = 0, parsed
    elif date_column is not None:
        date_index = index_of("date_column", date_column)
        dates = []
        for line, row in body:
            d = _parse_date(cell(row, date_index))
            if d is None:
                raise ValueError(f"{path}, line {line}: expected an ISO date or datetime in column "
                                 f"{header[date_index]!r}, got {cell(row, date_index)!r}")
            dates.append(d)
    if columns is None:
        indices = [i for i in range(len(header)) if i != date_index]
    else:
        indices = [index_of("columns", c) for c in ([columns] if isinstance(columns, (str, int)) else columns)]
    if not indices:
        raise ValueError(f"columns: expected at least one numeric column in {path}, got only {header}")

    decimal_comma = delimiter != ","
    values = np.empty((len(body), len(indices)))
    for r, (line, row) in enumerate(body):
        for c, index in enumerate(indices):
            text_value = cell(row, index)
            if text_value.lower() in MISSING:
                if fill is None:
                    raise MissingValueError(f"{path}, line {line}: missing value in column {header[index]!r} "
                                            f"(got {text_value!r}); fill gaps with fill='linear' or 'ffill'",
                                            path, line, header[index])
                values[r, c] = math.nan
                continue
            try:
                values[r, c] = _number(text_value, decimal_comma)
            except ValueError:
                raise ValueError(f"{path}, line {line}: expected a number in column {header[index]!r}, "
                                 f"got {text_value!r}") from None
            if not math.isfinite(values[r, c]):
                raise ValueError(f"{path}, line {line}: expected a finite number in column {header[index]!r}, "
                                 f"got {text_value!r}")

    if dates is not None:
        dates = np.array(dates)
        order = np.argsort(dates, kind="stable")
        dates, values = dates[order], values[order]
        repeated = np.flatnonzero(dates[1:] == dates[:-1])
        if len(repeated):
            raise ValueError(f"{path}: expected each date once in column {header[date_index]!r}, "
                             f"got {dates[repeated[0]]} more than once")
    for c in range(values.shape[1]):
        known = ~np.isnan(values[:, c])
        if not known.any():
            raise ValueError(f"{path}: expected some values in column {header[indices[c]]!r}, got none")
        if fill == "linear":
            positions = np.arange(len(values))
            values[~known, c] = np.interp(positions[~known], positions[known], values[known, c])
        elif fill == "ffill":
            last = np.maximum.accumulate(np.where(known, np.arange(len(values)), -1))
            first_known = np.flatnonzero(known)[0]
            values[:, c] = values[np.where(last < 0, first_known, last), c]
    return Table(values, [header[i] for i in indices], dates,
                 None if date_index is None else header[date_index])


# seasons for common sampling steps: a year of months, quarters, weeks; a week of days; a day of hours
_SEASONS = [(np.timedelta64(1, "h"), 24), (np.timedelta64(1, "D"), 7), (np.timedelta64(7, "D"), 52),
            (np.timedelta64(30, "D"), 12), (np.timedelta64(91, "D"), 4)]


def infer_season(dates: ArrayLike) -> Optional[int]:
    """The usual season for the sampling step of `dates` (datetime64, increasing): 24 for
    hourly, 7 for daily, 52 for weekly, 12 for monthly and 4 for quarterly data; None for
    other steps."""
    dates = np.asarray(dates)
    if dates.dtype.kind != "M" or len(dates) < 2:
        return None
    step = np.median(np.diff(dates.astype("datetime64[s]")).astype(np.float64))
    for unit, season in _SEASONS:
        seconds = unit / np.timedelta64(1, "s")
        if abs(step - seconds) <= 0.1 * seconds:
            return season
    return None


def mackey_glass(length: int, delay: int = 17, every: int = 3, noise: float = 0.1, seed: Optional[int] = None,
                 warmup: int = 500) -> np.ndarray:
    """A standardised Mackey-Glass series, the classic chaotic benchmark: Euler steps of
    dx/dt = 0.2 x(t - delay) / (1 + x(t - delay)^10) - 0.1 x(t) with unit time step, every
    `every`-th value kept after `warmup` steps, scaled to mean 0 and sd 1, plus Gaussian
    noise of sd `noise` drawn from `seed`. Shape (length,), float64."""
    length = _int("length", length)
    x = np.full(length * every + warmup, 1.2)
    for t in range(delay, len(x) - 1):
        x[t + 1] = x[t] + 0.2 * x[t - delay] / (1 + x[t - delay] ** 10) - 0.1 * x[t]
    clean = x[warmup::every][:length]
    clean = (clean - clean.mean()) / clean.std()
    return clean + noise * np.random.default_rng(seed).standard_normal(length)
