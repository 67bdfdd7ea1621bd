"""The docstrings of the toolkit (nn, losses, optim, clip, train, forecasting) and of
interop (checkpoint, keras, onnx, rnncore.torch): numpydoc sections filled in from their
shared tables, examples that run and leave no trace, and forecasting's type hints."""
import importlib
import inspect
import typing

import pytest

import rnncore as rc
from cases import assert_examples_run
from rnncore import checkpoint, forecasting, keras, onnx, optim, train

# the optional packages each module's examples import
NEEDS = {"rnncore.onnx": ("onnx", "onnxruntime"), "rnncore.torch": ("torch",)}
MODULES = ["rnncore.nn", "rnncore.losses", "rnncore.optim", "rnncore.clip", "rnncore.train", "rnncore.checkpoint",
           "rnncore.forecasting", "rnncore.keras", "rnncore.onnx", "rnncore.torch"]
FORECASTING_CLASSES = [forecasting.Forecaster, forecasting.Persistence, forecasting.SeasonalNaive,
                       forecasting.LinearAR, forecasting.Table, forecasting.MissingValueError]
FORECASTING_FUNCTIONS = [forecasting.backtest, forecasting.read_csv, forecasting.infer_season,
                         forecasting.mackey_glass, forecasting.rmse, forecasting.mae]
INTEROP_FUNCTIONS = [onnx.export, onnx.load, keras.load_weights, keras.to_keras_weights, keras.reorder_gates,
                     checkpoint.unregister]
CLASSES = [rc.Linear, rc.Embedding, rc.Tanh, rc.ReLU, rc.Sigmoid, rc.LastStep, rc.Sequential,
           rc.MSELoss, rc.CrossEntropyLoss, optim.SGD, optim.Adam, train.EarlyStopping] + FORECASTING_CLASSES
FUNCTIONS = [rc.clip_grad_norm_, rc.clip_grad_value_, checkpoint.save, checkpoint.load, checkpoint.read,
             checkpoint.register, checkpoint.registered] + [getattr(train, name) for name in train.__all__
                                                            if not isinstance(getattr(train, name), type)] + \
    FORECASTING_FUNCTIONS + INTEROP_FUNCTIONS
ESTIMATOR_METHODS = [(forecasting.Forecaster, name) for name in ("fit", "predict", "backtest", "get_params",
                                                                 "set_params")] + [
    (cls, name) for cls in (forecasting.Persistence, forecasting.SeasonalNaive, forecasting.LinearAR)
    for name in ("fit", "predict")]
METHODS = [(cls, name) for cls in CLASSES for name in ("__call__", "backward") if name in dir(cls)] + [
    (optim.SGD, name) for name in ("step", "zero_grad", "rebind", "state_dict", "load_state_dict")] + [
    (train.EarlyStopping, "step"), (train.EarlyStopping, "restore"),
    (rc.Sequential, "load_state_dict"), (rc.Sequential, "get_config"), (rc.Sequential, "from_config")] + \
    ESTIMATOR_METHODS
# what raises must say so; these only store their arguments or cannot fail
RAISES_NOTHING = {forecasting.infer_season, forecasting.Forecaster.get_params}
TORCH_NAMES = ["LSTM", "GRU", "RNN", "accelerate", "restore"]


def _section(doc, section, indent):
    return f"{section}\n{' ' * indent}{'-' * len(section)}" in doc


def _takes_arguments(function):
    return any(name not in ("self", "cls") for name in inspect.signature(function).parameters)


def _module(name):
    for package in NEEDS.get(name, ()):
        pytest.importorskip(package)
    return importlib.import_module(name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_and_register_nothing(name):
    before = checkpoint.registered()
    assert_examples_run(_module(name))
    assert checkpoint.registered() == before


def test_examples_of_functions_defined_elsewhere_run():
    # these live in core/module.py and interop/_gates.py, which a module's doctest
    # search skips
    before = checkpoint.registered()
    for function in (checkpoint.register, checkpoint.registered, checkpoint.unregister, keras.reorder_gates):
        assert_examples_run(function)
    assert checkpoint.registered() == before


@pytest.mark.parametrize("documented", FORECASTING_FUNCTIONS + INTEROP_FUNCTIONS + [
    getattr(cls, name) for cls, name in ESTIMATOR_METHODS], ids=lambda d: d.__qualname__)
def test_public_functions_say_what_they_raise(documented):
    if documented in RAISES_NOTHING:
        return
    assert _section(documented.__doc__, "Raises", 4) or _section(documented.__doc__, "Raises", 8), \
        documented.__qualname__


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_torch_adapter_docstrings_have_the_numpydoc_sections(name):
    documented = getattr(_module("rnncore.torch"), name)
    sections = ["Parameters", "Raises", "Examples"] + ([] if isinstance(documented, type) else ["Returns"])
    for section in sections:
        assert _section(documented.__doc__, section, 4), (name, section)


@pytest.mark.parametrize("documented", CLASSES + FUNCTIONS, ids=lambda d: d.__name__)
def test_public_docstrings_have_parameters_and_examples(documented):
    doc = documented.__doc__
    assert "%(" not in doc
    assert _section(doc, "Examples", 4), documented.__name__
    signature_of = documented.__init__ if isinstance(documented, type) else documented
    if _takes_arguments(signature_of):
        assert _section(doc, "Parameters", 4), documented.__name__
    if not isinstance(documented, type):
        assert _section(doc, "Returns", 4), documented.__name__


@pytest.mark.parametrize("cls, name", METHODS, ids=lambda x: getattr(x, "__name__", x))
def test_public_methods_document_their_parameters(cls, name):
    method = getattr(cls, name)
    doc = method.__doc__
    assert doc and "%(" not in doc, (cls.__name__, name)
    if _takes_arguments(method):
        assert _section(doc, "Parameters", 8), (cls.__name__, name)


PUBLIC_FORECASTING = [getattr(forecasting, name) for name in forecasting.__all__
                      if callable(getattr(forecasting, name)) and name != "Table"]


@pytest.mark.parametrize("public", PUBLIC_FORECASTING, ids=lambda p: p.__name__)
def test_forecasting_public_api_is_annotated(public):
    functions = ([getattr(public, name) for name in ("__init__", "fit", "predict", "backtest", "get_params",
                                                     "set_params") if hasattr(public, name)]
                 if isinstance(public, type) else [public])
    for function in functions:
        hints = typing.get_type_hints(function)
        parameters = [n for n, p in inspect.signature(function).parameters.items() if n != "self"]
        assert set(parameters) <= set(hints) and "return" in hints, (public.__name__, function.__name__)
