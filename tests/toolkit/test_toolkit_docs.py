"""The toolkit's docstrings (nn, losses, optim, clip, train, checkpoint): numpydoc sections
filled in from their shared tables, examples that run, and forecasting's type hints."""
import inspect
import typing

import pytest

import rnncore as rc
from cases import assert_examples_run
from rnncore import checkpoint, clip, forecasting, losses, nn, optim, train

MODULES = [nn, losses, optim, clip, train, checkpoint]
CLASSES = [rc.Linear, rc.Embedding, rc.Tanh, rc.ReLU, rc.Sigmoid, rc.LastStep, rc.Sequential,
           rc.MSELoss, rc.CrossEntropyLoss, optim.SGD, optim.Adam, train.EarlyStopping]
FUNCTIONS = [rc.clip_grad_norm_, rc.clip_grad_value_, checkpoint.save, checkpoint.load, checkpoint.read,
             checkpoint.register, checkpoint.registered] + [getattr(train, name) for name in train.__all__
                                                            if not isinstance(getattr(train, name), type)]
METHODS = [(cls, name) for cls in CLASSES for name in ("__call__", "backward") if name in dir(cls)] + [
    (optim.SGD, name) for name in ("step", "zero_grad", "rebind", "state_dict", "load_state_dict")] + [
    (train.EarlyStopping, "step"), (train.EarlyStopping, "restore"),
    (rc.Sequential, "load_state_dict"), (rc.Sequential, "get_config"), (rc.Sequential, "from_config")]


def _section(doc, section, indent):
    return f"{section}\n{' ' * indent}{'-' * len(section)}" in doc


def _takes_arguments(function):
    return any(name not in ("self", "cls") for name in inspect.signature(function).parameters)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    assert_examples_run(module)


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
