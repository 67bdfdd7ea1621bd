"""rc.forecasting: the estimators' API (fit/predict/backtest, get_params/set_params,
cloning), the baselines against values worked out by hand, the window's choice, a
multivariate input, read_csv on every common sampling step, and bad input."""
import inspect
import warnings

import numpy as np
import pytest

from rnncore import forecasting as fc

FAST = dict(horizon=6, season=12, hidden_size=8, epochs=5, ensemble=1, patience=5)


def seasonal_series(n=120, noise=0.0, seed=0):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return 5 + 0.1 * t + np.sin(2 * np.pi * t / 12) + noise * rng.standard_normal(n)


# -- baselines, by hand

def test_persistence_repeats_the_last_value():
    assert Persistence_predict([3.0, 1.0, 4.0], 3) == [4.0, 4.0, 4.0]


def Persistence_predict(series, horizon):
    return fc.Persistence().fit(np.array(series)).predict(horizon).tolist()


def test_seasonal_naive_repeats_the_last_season():
    y = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    assert fc.SeasonalNaive(3).fit(y).predict(5).tolist() == [10, 20, 30, 10, 20]


def test_seasonal_naive_with_drift_adds_the_mean_change_per_season_ahead():
    y = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 12.0, 24.0])
    # changes one season apart: 9, 18, 27, 2, 4 -> mean 12; last season 30, 12, 24
    forecast = fc.SeasonalNaive(3, drift=True).fit(y).predict(4)
    np.testing.assert_allclose(forecast, [30 + 12, 12 + 12, 24 + 12, 30 + 24])


def test_linear_ar_recovers_an_exact_recursion_and_forecasts_it():
    # x[t] = 1 + 0.5 x[t-1] - 0.2 x[t-2], no noise: least squares finds the coefficients
    x = [1.0, 2.0]
    for _ in range(30):
        x.append(1 + 0.5 * x[-1] - 0.2 * x[-2])
    model = fc.LinearAR(2).fit(np.array(x))
    np.testing.assert_allclose(model.coef_, [1, 0.5, -0.2], atol=1e-10)
    a, b = x[-1], x[-2]
    first = 1 + 0.5 * a - 0.2 * b
    second = 1 + 0.5 * first - 0.2 * a
    np.testing.assert_allclose(model.predict(2), [first, second], rtol=1e-10)


def test_seasonal_linear_ar_models_the_change_from_a_season_before():
    # y[t] - y[t-2] = 3 exactly: the seasonal-difference AR(1) has intercept 3, slope 0
    rng = np.random.default_rng(1)
    start = rng.standard_normal(2)
    y = np.concatenate([start + 3 * k for k in range(12)])
    model = fc.LinearAR(1, seasonal=2).fit(y)
    np.testing.assert_allclose(model.predict(4), [y[-2] + 3, y[-1] + 3, y[-2] + 6, y[-1] + 6], rtol=1e-9)


def test_baselines_need_enough_values():
    with pytest.raises(ValueError, match=r"series: expected at least \d+ values for LinearAR\(p=5\)"):
        fc.LinearAR(5).fit(np.arange(10.0))
    with pytest.raises(ValueError, match="series: expected at least 12 values"):
        fc.SeasonalNaive(12).fit(np.arange(5.0))


# -- Forecaster

def test_fit_returns_self_and_predict_has_the_horizon():
    y = seasonal_series()
    model = fc.Forecaster(**FAST)
    assert model.fit(y) is model
    forecast = model.predict()
    assert forecast.shape == (6,) and np.isfinite(forecast).all()
    assert model.predict(3).tolist() == forecast[:3].tolist()
    with pytest.raises(ValueError, match="horizon: expected at most the fitted horizon 6, got 7"):
        model.predict(7)


def test_forecaster_is_reproducible_from_its_seed():
    y = seasonal_series(noise=0.1)
    one = fc.Forecaster(**FAST).fit(y).predict()
    two = fc.Forecaster(**FAST).fit(y).predict()
    assert one.tolist() == two.tolist()


def test_predict_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="call fit"):
        fc.Forecaster().predict()


def test_get_params_is_the_constructor_signature_and_set_params_returns_self():
    model = fc.Forecaster(cell="gru", horizon=4)
    names = [n for n in inspect.signature(fc.Forecaster.__init__).parameters if n != "self"]
    params = model.get_params()
    assert list(params) == names
    assert params["cell"] == "gru" and params["horizon"] == 4 and params["window"] is None
    assert model.set_params(hidden_size=5, epochs=3) is model
    assert model.hidden_size == 5 and model.epochs == 3
    with pytest.raises(ValueError, match="set_params: expected one of"):
        model.set_params(hiden_size=5)


@pytest.mark.parametrize("params", [dict(epochs=9, hiden_size=5), dict(epochs=9, base__q=2),
                                    dict(epochs=9, ensemble__p=2)])
def test_a_refused_set_params_sets_nothing(params):
    model = fc.Forecaster(base=fc.LinearAR(4), epochs=3)
    before = model.get_params()
    with pytest.raises(ValueError, match="set_params: "):
        model.set_params(**params)
    assert model.get_params() == before


def test_constructor_stores_arguments_unmodified():
    # scikit-learn's clone checks this: validation belongs in fit
    odd = fc.Forecaster(cell="tcn", window=-3)
    assert odd.cell == "tcn" and odd.window == -3
    with pytest.raises(ValueError, match="cell: expected one of"):
        odd.fit(seasonal_series())


def test_clone_as_scikit_learn_does_it():
    model = fc.Forecaster(**FAST).fit(seasonal_series())
    copy = type(model)(**model.get_params())
    assert copy.get_params() == model.get_params()
    assert not hasattr(copy, "history_")
    for baseline in (fc.Persistence(), fc.SeasonalNaive(7, drift=True), fc.LinearAR(3, seasonal=12)):
        assert type(baseline)(**baseline.get_params()).get_params() == baseline.get_params()


def test_nested_base_parameters():
    model = fc.Forecaster(base=fc.LinearAR(4))
    assert model.get_params()["base__p"] == 4
    model.set_params(base__p=6)
    assert model.base.p == 6
    shallow = model.get_params(deep=False)
    assert "base__p" not in shallow
    assert type(model)(**shallow).base is model.base


def test_repr_shows_the_arguments_that_differ_from_the_defaults():
    assert repr(fc.SeasonalNaive(7, drift=True)) == "SeasonalNaive(season=7, drift=True)"
    assert repr(fc.Forecaster(cell="gru")) == "Forecaster(cell='gru')"


def test_zero_correction_is_the_base_forecast():
    # the networks forecast a correction to the base; with zero output weights it is the base
    y = seasonal_series(noise=0.05)
    model = fc.Forecaster(**FAST).fit(y)
    for net in model.networks_:
        net[2].parameters()["weight"][...] = 0
        net[2].parameters()["bias"][...] = 0
    base = fc.LinearAR(model.base_.p).fit(y).predict(6)
    np.testing.assert_allclose(model.predict(), base, rtol=1e-12)


def test_backtest_refits_at_each_origin_and_summarises():
    y = seasonal_series(noise=0.05)
    baseline = fc.SeasonalNaive(12)
    result = baseline.backtest(y, origins=3, horizon=6, step=12)
    assert result["origins"] == [90, 102, 114]
    for row, t in enumerate(result["origins"]):
        expected = fc.SeasonalNaive(12).fit(y[:t]).predict(6)
        np.testing.assert_array_equal(result["forecasts"][row], expected)
        assert result["rmse"][row] == pytest.approx(fc.rmse(expected, y[t:t + 6]))
        assert result["mae"][row] == pytest.approx(fc.mae(expected, y[t:t + 6]))
    assert result["mean_rmse"] == pytest.approx(np.mean(result["rmse"]))
    assert result["std_rmse"] == pytest.approx(np.std(result["rmse"]))
    assert result["overall_rmse"] == pytest.approx(fc.rmse(result["forecasts"], result["actual"]))
    assert not hasattr(baseline, "history_")  # the estimator itself is not fitted


def test_forecaster_backtest_default_step_is_the_horizon():
    y = seasonal_series(150, noise=0.05)
    result = fc.Forecaster(**FAST).backtest(y, origins=2)
    assert result["origins"] == [138, 144]
    assert np.isfinite(result["forecasts"]).all()


def test_backtest_with_too_many_origins_is_an_error():
    with pytest.raises(ValueError, match="origins: expected at most"):
        fc.Persistence().backtest(np.arange(20.0), origins=10, horizon=5)
    with pytest.raises(ValueError, match="backtest: the origin at index"):
        fc.Forecaster(**FAST).backtest(seasonal_series(60), origins=8)


def test_forecaster_learns_what_its_base_misses():
    # a seasonal shape that persistence (the base here) cannot follow six steps ahead
    t = np.arange(240)
    rng = np.random.default_rng(3)
    y = 2 * np.sin(2 * np.pi * t / 12) ** 3 + 0.05 * rng.standard_normal(240)
    kw = dict(horizon=6, season=12, hidden_size=8, epochs=30, ensemble=1, base="persistence", patience=30)
    model = fc.Forecaster(**kw).backtest(y, origins=2, step=12)
    base = fc.Persistence().backtest(y, origins=2, horizon=6, step=12)
    assert model["mean_rmse"] < 0.5 * base["mean_rmse"]


# -- window

def test_window_defaults_to_two_seasons_or_the_horizon():
    assert fc.Forecaster(**FAST).fit(seasonal_series()).window_ == 24
    assert fc.Forecaster(**dict(FAST, horizon=30)).fit(seasonal_series(200)).window_ == 30


def test_window_is_capped_by_a_short_series_with_a_warning_when_shorter_than_the_season():
    with pytest.warns(UserWarning, match="window=17 is shorter than season=52"):
        model = fc.Forecaster(**dict(FAST, season=52)).fit(seasonal_series(36))
    assert model.window_ == 17


def test_a_given_window_shorter_than_the_season_warns():
    with pytest.warns(UserWarning, match="window=6 is shorter than season=12"):
        fc.Forecaster(**dict(FAST, window=6)).fit(seasonal_series())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.Forecaster(**dict(FAST, window=12)).fit(seasonal_series())


def test_a_window_too_long_for_the_series_is_an_error():
    with pytest.raises(ValueError, match="window: expected at most 101 .* got 200"):
        fc.Forecaster(**dict(FAST, window=200)).fit(seasonal_series())


# -- multivariate input

def test_multivariate_input_reads_covariates_and_forecasts_the_target():
    rng = np.random.default_rng(0)
    driver = rng.standard_normal(300).cumsum() * 0.1
    target = np.r_[0, driver[:-1]] * 3 + 0.01 * rng.standard_normal(300)  # follows the driver a step later
    both = np.column_stack([target, driver])
    model = fc.Forecaster(**dict(FAST, horizon=1, season=None, base="persistence")).fit(both)
    assert model.networks_[0][0].input_size == 2
    assert model.predict().shape == (1,)
    # target=1 forecasts the other column, reading the first as the input
    swapped = fc.Forecaster(**dict(FAST, season=None, target=1)).fit(both[:, ::-1])
    assert swapped.predict().shape == (6,)
    with pytest.raises(ValueError, match=r"target: expected a column index in \[0, 1\], got 2"):
        fc.Forecaster(**dict(FAST, target=2)).fit(both)


# -- bad input

@pytest.mark.parametrize("series, error, message", [
    (np.array(["a", "b"]), TypeError, "series: expected numbers"),
    (np.zeros((3, 2, 2)), ValueError, r"series: expected shape \(n,\) or \(n, k\)"),
    (np.r_[np.arange(50.0), np.nan], ValueError, "series: expected finite values, got NaN or Inf at row 50"),
    (np.arange(10.0), ValueError, "series: expected at least 21 values for horizon 6, got 10"),
])
def test_bad_series(series, error, message):
    with pytest.raises(error, match=message):
        fc.Forecaster(**FAST).fit(series)


@pytest.mark.parametrize("params, message", [
    (dict(horizon=0), "horizon: expected an integer >= 1, got 0"),
    (dict(base="prophet"), "base: expected one of"),
    (dict(base="seasonal_naive", season=None), "base: expected a season"),
    (dict(learning_rate=-1), "learning_rate: expected a number > 0"),
    (dict(seed=-1), "seed: expected an integer >= 0"),
])
def test_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        fc.Forecaster(**dict(FAST, **params)).fit(seasonal_series())


# -- read_csv

@pytest.mark.parametrize("unit, step, season", [
    ("h", 1, 24), ("D", 1, 7), ("D", 7, 52), ("M", 1, 12), ("D", 91, 4)])
def test_read_csv_parses_every_sampling_step(tmp_path, unit, step, season):
    start = np.datetime64("2020-01-01T00", "h") if unit == "h" else np.datetime64("2020-01", unit)
    if unit == "D":
        start = np.datetime64("2020-01-06")
    dates = start + np.arange(40) * np.timedelta64(step, unit)
    path = tmp_path / "series.csv"
    text = "".join(f"{d},{i * 0.5}\n" for i, d in enumerate(dates))
    path.write_text("when,value\n" + text)
    table = fc.read_csv(path)
    assert table.columns == ["value"] and table.date_column == "when"
    assert table.dates.dtype.kind == "M"
    np.testing.assert_array_equal(table.dates, dates)
    np.testing.assert_array_equal(table.values[:, 0], np.arange(40) * 0.5)
    assert fc.infer_season(table.dates) == season


def test_read_csv_sorts_rows_into_date_order_and_refuses_repeated_dates(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("day,v\n2020-01-03,3\n2020-01-01,1\n2020-01-02,2\n")
    table = fc.read_csv(path)
    assert table.values[:, 0].tolist() == [1, 2, 3]
    assert np.all(np.diff(table.dates) > np.timedelta64(0))
    path.write_text("day,v\n2020-01-01,3\n2020-01-01,1\n")
    with pytest.raises(ValueError, match="expected each date once"):
        fc.read_csv(path)


@pytest.mark.parametrize("delimiter, text", [
    (";", "date;sales;price\n2020-01-01;1,5;2\n2020-01-02;2,5;3\n"),
    ("\t", "date\tsales\tprice\n2020-01-01\t1.5\t2\n2020-01-02\t2.5\t3\n"),
    ("|", "date|sales|price\n2020-01-01|1.5|2\n2020-01-02|2.5|3\n"),
])
def test_read_csv_sniffs_the_delimiter(tmp_path, delimiter, text):
    path = tmp_path / "s.csv"
    path.write_text(text)
    for given in (None, delimiter):
        table = fc.read_csv(path, ["sales", "price"], delimiter=given)
        assert table.columns == ["sales", "price"]
        np.testing.assert_array_equal(table.values, [[1.5, 2], [2.5, 3]])


def test_read_csv_missing_values_refused_or_filled(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("t,a\n2020-01-01,\n2020-01-02,2\n2020-01-03,NA\n2020-01-04,\n2020-01-05,8\n")
    with pytest.raises(fc.MissingValueError, match="line 2: missing value in column 'a'") as caught:
        fc.read_csv(path)
    assert caught.value.line == 2 and caught.value.column == "a"
    assert fc.read_csv(path, fill="linear").values[:, 0].tolist() == [2, 2, 4, 6, 8]
    assert fc.read_csv(path, fill="ffill").values[:, 0].tolist() == [2, 2, 2, 2, 8]


@pytest.mark.parametrize("text, kwargs, message", [
    ("a,b\n1,2\n3,oops\n", {}, "line 3: expected a number in column 'b', got 'oops'"),
    ("just a header\n", {}, "expected a header row and data rows"),
    ("a,b\n1,2\n", dict(columns=["c"]), r"columns: expected a name in \['a', 'b'\]"),
    ("a,b\n1,2\n", dict(columns=[5]), r"columns: expected an index in \[0, 1\]"),
    ("a,b\n1,2\n", dict(columns=[-3]), r"columns: expected an index in \[0, 1\]"),
    ("a,b\n1,2\n", dict(fill="mean"), "fill: expected None, 'linear' or 'ffill'"),
    ("d,b\n2020-01-01,1\nlater,2\n", dict(date_column="d"), "line 3: expected an ISO date"),
])
def test_read_csv_bad_input(tmp_path, text, kwargs, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        fc.read_csv(path, **kwargs)


def test_read_csv_without_dates_and_numbers_that_look_like_years(tmp_path):
    path = tmp_path / "years.csv"
    path.write_text("year,value\n1700,5\n1701,11\n")
    table = fc.read_csv(path)
    assert table.dates is None and table.columns == ["year", "value"]


def test_read_csv_reads_only_the_columns_asked_for(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("date,store,sales\n2020-01-01,north,5\n2020-01-02,south,7\n")
    table = fc.read_csv(path, [-1])
    assert table.columns == ["sales"] and table.values[:, 0].tolist() == [5, 7]


def test_shipped_series_reads_as_monthly():
    from rnncore.app import demo
    table = fc.read_csv(demo.DEFAULT_CSV)
    assert table.values.shape == (526, 1) and str(table.dates[0]) == "1958-03"
    assert fc.infer_season(table.dates) == 12


def test_mackey_glass_is_standardised_noisy_and_seeded():
    clean = fc.mackey_glass(500, noise=0.0)
    assert clean.shape == (500,)
    assert abs(clean.mean()) < 1e-12 and abs(clean.std() - 1) < 1e-12
    noisy = fc.mackey_glass(500, seed=1)
    assert np.std(noisy - clean) == pytest.approx(0.1, rel=0.1)
    assert fc.mackey_glass(500, seed=1).tolist() == noisy.tolist()


@pytest.mark.parametrize("name, value", [("length", 0), ("delay", 0), ("every", 0), ("warmup", -1),
                                         ("noise", -0.1), ("noise", float("nan")), ("noise", "0.1")])
def test_mackey_glass_refuses_arguments_out_of_range_by_name(name, value):
    arguments = dict(length=10)
    arguments[name] = value
    with pytest.raises(ValueError, match=f"{name}: expected"):
        fc.mackey_glass(**arguments)


@pytest.mark.parametrize("error", [fc.rmse, fc.mae])
def test_errors_refuse_shapes_that_differ(error):
    assert error([1.0, 3.0], [1.0, 1.0]) in (np.sqrt(2.0), 1.0)
    with pytest.raises(ValueError, match=r"actual: expected the shape of forecast \(3,\), got \(1,\)"):
        error([1.0, 2.0, 3.0], [1.0])
