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
    >>> t = np.arange(120)
    >>> y = 10 + 0.05 * t + np.sin(2 * np.pi * t / 12)
    >>> model = rc.forecasting.Forecaster(horizon=6, season=12, epochs=5, ensemble=1).fit(y)
    >>> model.predict().shape
    (6,)
    >>> scores = model.backtest(y, origins=2)      # refits a copy at each origin
    >>> len(scores["rmse"]), scores["forecasts"].shape
    (2, (2, 6))
"""
from __future__ import annotations

import csv
import inspect
import math
import numbers
import warnings
from collections import namedtuple
from pathlib import Path
from typing import Any, Optional, Sequence, Union
import os

import numpy as np
from numpy.typing import ArrayLike

from ..core.docs import filled
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

# The entries the estimators' docstrings share, filled in by `filled(_DOCS)`
_DOCS = {
    'target': 'target : int, default 0\n        The forecast column of a 2-d series.',
    'series': 'series : array_like, (n,) or (n, k)\n            The series, oldest value first: finite numbers; a 2-d series is forecast in\n'
              '            column `target`.',
    'dates': 'dates : array_like, (n,), optional\n            The dates of the values, kept as `dates_` for the caller; not read.',
    'horizon': 'horizon : int\n            Steps to forecast, >= 1.',
    'fit_raises': 'Raises\n        ------\n        TypeError\n            A series that is not numbers.\n'
                  '        ValueError\n            A series of the wrong shape, with NaN or Inf, or too short for the\n'
                  '            estimator; a parameter out of range, naming it.',
    'predict_raises': 'Raises\n        ------\n        RuntimeError\n            The estimator is not fitted.\n'
                      '        ValueError\n            A horizon out of range.',
}


def _errors(forecast, actual):
    forecast, actual = np.asarray(forecast, float), np.asarray(actual, float)
    if forecast.shape != actual.shape:
        raise ValueError(f"actual: expected the shape of forecast {forecast.shape}, got {actual.shape}")
    return forecast - actual


def rmse(forecast: ArrayLike, actual: ArrayLike) -> float:
    """Root mean squared error of `forecast` against `actual`: sqrt(mean((f - a)^2)).

    Parameters
    ----------
    forecast : array_like, any shape
        The forecast values.
    actual : array_like, the shape of `forecast`
        The values that came.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        The shapes differ.

    Examples
    --------
    >>> import rnncore as rc
    >>> rc.forecasting.rmse([1.0, 2.0], [1.0, 4.0])
    1.4142135623730951
    """
    return float(np.sqrt(np.mean(_errors(forecast, actual) ** 2)))


def mae(forecast: ArrayLike, actual: ArrayLike) -> float:
    """Mean absolute error of `forecast` against `actual`: mean(|f - a|).

    Parameters
    ----------
    forecast : array_like, any shape
        The forecast values.
    actual : array_like, the shape of `forecast`
        The values that came.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        The shapes differ.

    Examples
    --------
    >>> import rnncore as rc
    >>> rc.forecasting.mae([1.0, 2.0], [1.0, 4.0])
    1.0
    """
    return float(np.mean(np.abs(_errors(forecast, actual))))


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
        """The constructor's arguments by name (scikit-learn's convention).

        Parameters
        ----------
        deep : bool, default True
            Also list the arguments of a nested estimator (a Forecaster's `base`), as
            ``name__argument``.

        Returns
        -------
        dict of str to object
            The arguments as stored, in the constructor's order.

        Examples
        --------
        >>> import rnncore as rc
        >>> rc.forecasting.SeasonalNaive(season=4).get_params()
        {'season': 4, 'drift': False, 'target': 0}
        >>> model = rc.forecasting.Forecaster(base=rc.forecasting.SeasonalNaive(season=4))
        >>> model.get_params()["base__season"]
        4
        """
        params = {}
        for name in self._param_names():
            value = getattr(self, name)
            params[name] = value
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                params.update((f"{name}__{key}", item) for key, item in value.get_params(deep=True).items())
        return params

    def set_params(self, **params: Any) -> _Estimator:
        """Set constructor arguments by name; they take effect at the next `fit`.

        Parameters
        ----------
        **params
            ``name=value`` for the constructor's arguments; ``name__argument=value``
            reaches a nested estimator (a Forecaster's `base`). Values are checked at
            `fit`, as the constructor's are.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            A name the constructor does not take, or ``name__argument`` where `name`
            holds no estimator; nothing is set then.

        Examples
        --------
        >>> import rnncore as rc
        >>> rc.forecasting.LinearAR(p=2).set_params(p=3, seasonal=12)
        LinearAR(p=3, seasonal=12)
        """
        direct, nested = self._split_params(params)
        for name, value in direct.items():
            setattr(self, name, value)
        for name, sub_params in nested.items():
            getattr(self, name).set_params(**sub_params)
        return self

    def _split_params(self, params):
        """set_params' arguments as (own, {name: nested}), every name checked first (in
        nested estimators too) so that a wrong one sets nothing."""
        names = self._param_names()
        direct, nested = {}, {}
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in names:
                raise ValueError(f"set_params: expected one of {names}, got {name!r}")
            if sub:
                nested.setdefault(name, {})[sub] = value
            else:
                direct[name] = value
        for name, sub_params in nested.items():
            inner = direct.get(name, getattr(self, name))
            if not hasattr(inner, "set_params"):
                raise ValueError(f"set_params: {name!r} is {inner!r}, which has no parameters to set")
            if isinstance(inner, _Estimator):
                inner._split_params(sub_params)
        return direct, nested

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
        """Rolling-origin evaluation of this estimator's parameters on `series`:
        ``rc.forecasting.backtest(self, series, ...)``, which says more. The estimator
        itself is neither fitted nor changed.

        Parameters
        ----------
        series : array_like, (n,) or (n, k)
            The whole series; each origin's copy is fitted on the part before it.
        origins : int, default 5
            Forecast origins, >= 1.
        horizon : int, optional
            Steps forecast at each origin; None: the estimator's own `horizon`.
        step : int, optional
            Steps between consecutive origins; None: `horizon`.

        Returns
        -------
        dict
            Per-origin and overall RMSE and MAE, the forecasts and the actual values;
            see `rc.forecasting.backtest`.

        Raises
        ------
        ValueError
            Too many origins for the series, an origin that leaves too little to fit
            on, or an argument out of range.

        Examples
        --------
        >>> import numpy as np, rnncore as rc
        >>> y = np.arange(20.0)
        >>> scores = rc.forecasting.Persistence().backtest(y, origins=2, horizon=3)
        >>> scores["origins"], scores["mean_mae"]
        ([14, 17], 2.0)
        """
        return backtest(self, series, origins=origins, horizon=horizon, step=step)


class _Baseline(_Estimator):
    """A baseline fitted on one column; subclasses give `_fit(y)` and `_forecast(y, ends, steps)`."""

    def _min_history(self):
        """The fewest values the baseline needs before an origin."""
        return 1

    @filled(_DOCS)
    def fit(self, series: ArrayLike, dates: Optional[ArrayLike] = None) -> _Baseline:
        """Learn from `series`; the other columns of a 2-d series are not read.

        Parameters
        ----------
        %(series)s
        %(dates)s

        Returns
        -------
        self

        %(fit_raises)s

        Examples
        --------
        >>> import rnncore as rc
        >>> model = rc.forecasting.SeasonalNaive(season=2).fit([1.0, 5.0, 2.0, 6.0])
        >>> model.history_
        array([1., 5., 2., 6.])
        """
        values, target = _as_series(series, getattr(self, "target", 0))
        y = values[:, target]
        self._fit(y)
        self.history_ = y
        self.dates_ = None if dates is None else np.asarray(dates)
        return self

    @filled(_DOCS)
    def predict(self, horizon: int) -> np.ndarray:
        """Forecast the `horizon` values after the fitted series.

        Parameters
        ----------
        %(horizon)s

        Returns
        -------
        np.ndarray, (horizon,), float64

        %(predict_raises)s

        Examples
        --------
        >>> import rnncore as rc
        >>> rc.forecasting.SeasonalNaive(season=2).fit([1.0, 5.0, 2.0, 6.0]).predict(3)
        array([2., 6., 2.])
        """
        self._check_fitted()
        horizon = _int("horizon", horizon)
        return self._forecast(self.history_, np.array([len(self.history_)]), horizon)[0]

    def _needs(self, y, count, what):
        if len(y) < count:
            raise ValueError(f"series: expected at least {count} values for {what}, got {len(y)}")


@filled(_DOCS)
class Persistence(_Baseline):
    """Every future value equals the last known one: y[n + k] = y[n - 1], k >= 0.

    Parameters
    ----------
    %(target)s

    Attributes
    ----------
    history_ : np.ndarray, (n,)
        The fitted column.

    Examples
    --------
    >>> import rnncore as rc
    >>> rc.forecasting.Persistence().fit([1.0, 2.0, 4.0]).predict(3)
    array([4., 4., 4.])
    """

    def __init__(self, target: int = 0) -> None:
        self.target = target

    def _fit(self, y):
        self._needs(y, 1, repr(self))

    def _forecast(self, y, ends, steps):
        return np.repeat(y[ends - 1][:, None], steps, axis=1)


@filled(_DOCS)
class SeasonalNaive(_Baseline):
    """Each future value equals the value one season before it (the last known season
    repeated); with drift=True plus the mean season-over-season change of the fitted
    series per season ahead: y[n + k] = y[n - s + (k % s)] + (k // s + 1) * d, k >= 0,
    d = mean(y[t] - y[t - s]).

    Parameters
    ----------
    season : int, default 12
        The season s, in steps (12 for monthly data with a yearly cycle).
    drift : bool, default False
        Add the drift d; `fit` then needs s + 1 values, else s.
    %(target)s

    Attributes
    ----------
    history_ : np.ndarray, (n,)
        The fitted column.
    drift_ : float
        d, or 0.0 without drift.

    Examples
    --------
    >>> import rnncore as rc
    >>> y = [1.0, 2.0, 3.0, 4.0, 2.0, 3.0, 4.0, 5.0]
    >>> rc.forecasting.SeasonalNaive(season=4).fit(y).predict(4)
    array([2., 3., 4., 5.])
    >>> rc.forecasting.SeasonalNaive(season=4, drift=True).fit(y).predict(6)
    array([3., 4., 5., 6., 4., 5.])
    """

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


@filled(_DOCS)
class LinearAR(_Baseline):
    """Autoregression of order p with an intercept, fitted by least squares and forecast
    recursively: x[t] = c + a_1 x[t-1] + ... + a_p x[t-p]. With seasonal=s the model is
    fitted to the season-over-season changes x[t] = y[t] - y[t - s] (the seasonal
    difference) and the forecasts are integrated back; with seasonal=None, x = y.

    Parameters
    ----------
    p : int, default 12
        The order, >= 1. `fit` needs at least p + s + 2 (p + 1) values (s = 0 without
        `seasonal`): two equations per coefficient.
    seasonal : int, optional
        The season s of the difference; None: no differencing.
    %(target)s

    Attributes
    ----------
    history_ : np.ndarray, (n,)
        The fitted column.
    coef_ : np.ndarray, (p + 1,)
        c, a_1, ..., a_p.

    Examples
    --------
    >>> import rnncore as rc
    >>> model = rc.forecasting.LinearAR(p=1).fit([1.0, 3.0, 7.0, 15.0, 31.0, 63.0])
    >>> model.coef_.round(6)                        # x[t] = 1 + 2 x[t-1]
    array([1., 2.])
    >>> model.predict(2).round(6)
    array([127., 255.])
    """

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


@filled(_DOCS)
class Forecaster(_Estimator):
    """A recurrent network that forecasts the next `horizon` values at once, as a
    correction to a strong linear baseline.

    At each origin t the network reads the last `window` steps (the target relative to
    its last value y[t-1], divided by the spread of its step-to-step changes, and any
    covariate columns standardised), and its head outputs the `horizon` residuals
    y[t:t+horizon] - base forecast, in units of their spread; an output of zero is the
    base forecast itself. The base and every scale are learnt on the training part only.
    `fit` holds out the last `horizon` values for early stopping; `ensemble` networks
    from consecutive seeds are averaged. The constructor stores its arguments as given;
    `fit` checks them.

    Parameters
    ----------
    cell : {"lstm", "gru", "rnn"}, default "lstm"
        The recurrent layer: rc.LSTM, rc.GRU or rc.RNN, float32.
    window : int, optional
        Steps the network reads before each origin. None: max(2 * season, horizon, 8),
        capped by what the series allows; a window shorter than the season warns.
    horizon : int, default 12
        Steps forecast at once, and the most `predict` gives.
    season : int, optional
        The season in steps (12 for monthly data); None: no seasonal structure assumed.
    hidden_size : int, default 16
        Units of the recurrent layer.
    epochs : int, default 200
        The most epochs per network; early stopping ends sooner.
    seed : int, default 0
        Seeds the initialisation and the batch order; member m of the ensemble uses
        seed + 7919 m.
    base : {"ar", "seasonal_naive", "persistence"} or a baseline estimator, default "ar"
        The forecast the network corrects: "ar" is LinearAR(p=ar_order),
        "seasonal_naive" SeasonalNaive(season, drift=True) (needs `season`); an
        estimator (Persistence, SeasonalNaive, LinearAR) is copied, not fitted in place.
    ar_order : int, optional
        The order of the "ar" base; None: 2 * season, or the window without a season,
        at most a quarter of the training part.
    ensemble : int, default 3
        Networks averaged.
    %(target)s The other columns are inputs known up to each origin, so `predict`
        needs nothing more.
    learning_rate : float, default 0.005
        Adam's step size.
    batch_size : int, default 32
        Training windows per step.
    patience : int, default 30
        Epochs without a better validation RMSE before a network stops.
    max_grad_norm : float, default 1.0
        The gradient-norm clip of every step.
    verbose : bool, default False
        Show a progress bar per network.

    Attributes
    ----------
    networks_ : list of rc.Sequential
        The trained networks (recurrent layer, LastStep, Linear).
    validation_rmse_ : list of float
        Each network's best RMSE on the held-out last `horizon` values.
    base_ : baseline estimator
        The base, refitted on the whole series for `predict`.
    window_ : int
        The window used.
    history_ : np.ndarray, (n, k)
        The fitted series, float64.
    dates_ : np.ndarray or None
        The `dates` given to `fit`.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> t = np.arange(120)
    >>> y = 10 + 0.05 * t + np.sin(2 * np.pi * t / 12)
    >>> model = rc.forecasting.Forecaster("gru", horizon=6, season=12, epochs=5, ensemble=1)
    >>> model
    Forecaster(cell='gru', horizon=6, season=12, epochs=5, ensemble=1)
    >>> model.fit(y).predict().shape
    (6,)
    >>> model.window_, type(model.base_).__name__
    (24, 'LinearAR')
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

    @filled(_DOCS)
    def fit(self, series: ArrayLike, dates: Optional[ArrayLike] = None) -> Forecaster:
        """Train the networks on `series`, the last `horizon` values held out to stop
        early, and refit the base on all of it.

        Parameters
        ----------
        %(series)s The other columns are covariates.
        %(dates)s

        Returns
        -------
        self

        %(fit_raises)s The fewest values: 2 * horizon + 9, more for a long window
            or base.

        Warns
        -----
        UserWarning
            The window is shorter than the season.

        Examples
        --------
        >>> import numpy as np, rnncore as rc
        >>> y = np.sin(np.arange(60) / 3)
        >>> model = rc.forecasting.Forecaster(horizon=4, epochs=3, ensemble=2)
        >>> model.fit(y) is model, len(model.networks_)
        (True, 2)
        """
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
        """Forecast the values after the fitted series. Covariates need no future
        values: the networks read them only up to the end of the fitted series.

        Parameters
        ----------
        horizon : int, optional
            Steps to forecast, 1 to the fitted `horizon`; None: the fitted `horizon`.

        Returns
        -------
        np.ndarray, (horizon,), float64

        Raises
        ------
        RuntimeError
            The forecaster is not fitted.
        ValueError
            A horizon below 1 or above the fitted one.

        Examples
        --------
        >>> import numpy as np, rnncore as rc
        >>> y = np.sin(np.arange(60) / 3)
        >>> model = rc.forecasting.Forecaster(horizon=4, epochs=3, ensemble=1).fit(y)
        >>> model.predict().shape, model.predict(2).shape
        ((4,), (2,))
        """
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
    """Rolling-origin evaluation of `estimator` on `series`.

    At each of `origins` origins t (the last at len(series) - horizon, the others `step`
    apart before it), a fresh copy of the estimator (same parameters) is fitted on
    series[:t] and forecasts series[t:t + horizon]; the estimator itself is left as it
    was.

    Parameters
    ----------
    estimator : Forecaster, Persistence, SeasonalNaive or LinearAR
        The estimator whose parameters are evaluated; not fitted or changed.
    series : array_like, (n,) or (n, k)
        The whole series, oldest value first; a 2-d series is forecast in the
        estimator's `target` column.
    origins : int, default 5
        Forecast origins, >= 1.
    horizon : int, optional
        Steps forecast at each origin; None: the estimator's own `horizon` (baselines
        have none: give it).
    step : int, optional
        Steps between consecutive origins; None: `horizon`, test stretches that do not
        overlap.

    Returns
    -------
    dict
        "origins": the indices t, a list; "forecasts" and "actual": arrays (origins,
        horizon); "rmse" and "mae": lists, one value per origin; "mean_rmse",
        "std_rmse", "mean_mae", "std_mae": their mean and spread (standard deviation)
        over the origins; "overall_rmse", "overall_mae": over every forecast value.

    Raises
    ------
    ValueError
        No horizon, more origins than the series holds (the message says how many
        fit), an origin that leaves too little to fit on (naming its index), or an
        argument out of range.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> y = np.array([1.0, 2.0, 3.0, 4.0] * 4)
    >>> scores = rc.forecasting.backtest(rc.forecasting.SeasonalNaive(season=4), y, origins=3, horizon=2)
    >>> scores["origins"], scores["mean_rmse"]
    ([10, 12, 14], 0.0)
    >>> scores["forecasts"][-1]
    array([3., 4.])
    """
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
Table.__doc__ = """What `read_csv` returns, a named tuple.

    Parameters
    ----------
    values : np.ndarray, (n, k), float64
        The numeric columns, in the order of `columns`, rows in date order.
    columns : list of str
        The header names of the k columns read.
    dates : np.ndarray, (n,), datetime64, or None
        The parsed dates; None without a date column.
    date_column : str or None
        The header name of the date column.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> table = rc.forecasting.Table(np.zeros((3, 1)), ["sales"], None, None)
    >>> table.values.shape, table.columns
    ((3, 1), ['sales'])
    """


class MissingValueError(ValueError):
    """A CSV cell with no value (empty, NA, NaN, null, ...), raised by `read_csv` without
    `fill`; a ValueError.

    Parameters
    ----------
    message : str
        The message, which names the file, line and column.
    path : str or os.PathLike
        The file, kept as `path`.
    line : int
        The line of the file, 1-based, kept as `line`.
    column : str
        The header name of the column, kept as `column`.

    Examples
    --------
    >>> import os, tempfile, rnncore as rc
    >>> path = os.path.join(tempfile.mkdtemp(), "gap.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("day,sales\\n2024-01-01,3\\n2024-01-02,\\n2024-01-03,5\\n")
    >>> try:
    ...     rc.forecasting.read_csv(path)
    ... except rc.forecasting.MissingValueError as error:
    ...     print(error.line, error.column)
    3 sales
    """

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

    Parameters
    ----------
    path : str or os.PathLike
        The file, UTF-8 (a byte-order mark is allowed).
    columns : sequence of str or int, or str or int, optional
        Names or 0-based indices (negative from the end) of the numeric columns to read,
        in order; None: every column but the date column.
    date_column : str, int, "auto" or None, default "auto"
        A name or index; "auto": the first column when every cell in it is an ISO date
        or datetime such as 2001-03, 2001-03-05 or 2001-03-05T14:00 (parsed with
        numpy's datetime64); None: no dates.
    delimiter : str, optional
        None sniffs one of , ; tab | (csv.Sniffer). With ; or tab a decimal comma
        (3,5) is read too.
    fill : {None, "linear", "ffill"}, optional
        None refuses a missing cell (empty, NA, NaN, null, none, -, ?); "linear"
        interpolates between the neighbouring values, "ffill" repeats the last known one
        (leading gaps take the first known value).

    Returns
    -------
    Table
        values (n, k) float64, columns, dates (n,) datetime64 or None, date_column.
        Rows are put in date order when the dates are not.

    Raises
    ------
    MissingValueError
        A missing cell without `fill`, naming its line and column.
    ValueError
        No data rows, an unknown column, a cell that is not a (finite) number or not a
        date in the date column, a date given twice, a column with no values, a file
        that is not UTF-8 CSV, or an unknown `fill`; each names the line or column.
    OSError
        The file cannot be read.

    Examples
    --------
    >>> import os, tempfile, rnncore as rc
    >>> path = os.path.join(tempfile.mkdtemp(), "sales.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("week;sales\\n2024-01-01;3,5\\n2024-01-08;NA\\n2024-01-15;4,5\\n")
    >>> table = rc.forecasting.read_csv(path, fill="linear")
    >>> table.columns, table.date_column
    (['sales'], 'week')
    >>> table.values[:, 0]
    array([3.5, 4. , 4.5])
    >>> table.dates
    array(['2024-01-01', '2024-01-08', '2024-01-15'], dtype='datetime64[D]')
    """
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
    """The usual season for the sampling step of `dates`.

    Parameters
    ----------
    dates : array_like, (n,), datetime64
        Increasing dates; the step is their median difference, matched within 10%.

    Returns
    -------
    int or None
        24 for hourly, 7 for daily, 52 for weekly, 12 for monthly and 4 for quarterly
        data; None for other steps, fewer than two dates, or values that are not
        datetime64.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rc.forecasting.infer_season(np.arange("2024-01", "2025-01", dtype="datetime64[M]"))
    12
    >>> rc.forecasting.infer_season(np.arange("2024-01-01T00", "2024-01-02T00", dtype="datetime64[h]"))
    24
    >>> rc.forecasting.infer_season([1, 2, 3]) is None
    True
    """
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
    dx/dt = 0.2 x(t - delay) / (1 + x(t - delay)^10) - 0.1 x(t) with unit time step from
    x = 1.2, every `every`-th value kept after `warmup` steps, scaled to mean 0 and sd 1,
    plus Gaussian noise.

    Parameters
    ----------
    length : int
        Values returned, >= 1.
    delay : int, default 17
        The delay of the equation, >= 1 (17 and more: chaotic).
    every : int, default 3
        Keep every `every`-th step, >= 1.
    noise : float, default 0.1
        The standard deviation of the added noise, >= 0.
    seed : int or np.random.Generator, optional
        Seeds the noise (np.random.default_rng).
    warmup : int, default 500
        Steps dropped at the start, >= 0.

    Returns
    -------
    np.ndarray, (length,), float64

    Raises
    ------
    ValueError
        An argument out of range, naming it.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> x = rc.forecasting.mackey_glass(300, noise=0.0)
    >>> x.shape, bool(np.allclose([x.mean(), x.std()], [0.0, 1.0]))
    ((300,), True)
    """
    length = _int("length", length)
    delay, every, warmup = _int("delay", delay), _int("every", every), _int("warmup", warmup, minimum=0)
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < math.inf:
        raise ValueError(f"noise: expected a finite number >= 0, got {noise!r}")
    x = np.full(length * every + warmup, 1.2)
    for t in range(delay, len(x) - 1):
        x[t + 1] = x[t] + 0.2 * x[t - delay] / (1 + x[t - delay] ** 10) - 0.1 * x[t]
    clean = x[warmup::every][:length]
    clean = (clean - clean.mean()) / clean.std()
    return clean + noise * np.random.default_rng(seed).standard_normal(length)
