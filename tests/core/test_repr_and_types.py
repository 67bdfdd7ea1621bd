"""repr shows the configuration as a constructor call that rebuilds it; the API reference
names only what exists; the package ships its type-hint marker."""
import pathlib
import re

import numpy as np
import pytest

import rnncore as rc
from cases import assert_examples_run

NAMESPACE = {name: getattr(rc, name) for name in rc.__all__}
NAMESPACE.update(SGD=rc.optim.SGD, Adam=rc.optim.Adam)

CONFIGURED = [
    (rc.RNN, (3, 5), {}),
    (rc.RNN, (3, 5), dict(num_layers=2, nonlinearity="relu", bias=False, batch_first=True, dropout=0.25,
                          bidirectional=True, dtype=np.float64, backend="numpy")),
    (rc.LSTM, (8, 32), dict(num_layers=2, bidirectional=True, proj_size=16)),
    (rc.LSTM, (4, 6), dict(peephole=True, coupled_input_forget=True, dtype="float64")),
    (rc.GRU, (2, 3), dict(reset_after=False, batch_first=True)),
    (rc.JordanRNN, (2, 3, 4), dict(nonlinearity="relu", output_activation="sigmoid", bias=False)),
    (rc.RNNCell, (2, 3), dict(nonlinearity="relu", dtype=np.float64)),
    (rc.GRUCell, (2, 3), dict(reset_after=False, bias=False)),
    (rc.LSTMCell, (2, 3), dict(peephole=True)),
    (rc.Linear, (4, 2), dict(bias=False, dtype=np.float64)),
    (rc.Embedding, (10, 3), {}),
    (rc.LastStep, (), dict(batch_first=True)),
    (rc.Tanh, (), {}),
    (rc.ReLU, (), {}),
    (rc.Sigmoid, (), {}),
    (rc.MSELoss, (), dict(reduction="sum")),
    (rc.CrossEntropyLoss, (), dict(ignore_index=3)),
]


@pytest.mark.parametrize("cls, args, kwargs", CONFIGURED, ids=lambda v: getattr(v, "__name__", None))
def test_repr_rebuilds_the_configuration(cls, args, kwargs):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RNN's dropout with one layer
        module = cls(*args, **kwargs)
        rebuilt = eval(repr(module), NAMESPACE)
    assert type(rebuilt) is cls
    assert rebuilt.get_config() == module.get_config()
    assert repr(rebuilt) == repr(module)


def test_repr_names_only_what_differs_from_the_defaults():
    assert repr(rc.LSTM(8, 32)) == "LSTM(8, 32)"
    assert repr(rc.LSTM(8, 32, num_layers=2, bidirectional=True, proj_size=16, dtype=np.float64)) == \
        "LSTM(8, 32, num_layers=2, bidirectional=True, proj_size=16, dtype='float64')"
    assert repr(rc.RNNCell(2, 3, "relu")) == "RNNCell(2, 3, nonlinearity='relu')"
    assert repr(rc.MSELoss()) == "MSELoss()"


def test_sequential_repr_is_one_module_per_line_and_rebuilds():
    model = rc.Sequential(rc.LSTM(3, 4), rc.Sequential(rc.Linear(4, 4), rc.Tanh()), rc.LastStep(),
                          rc.Linear(4, 1))
    text = repr(model)
    assert text.splitlines() == [
        "Sequential(",
        "  LSTM(3, 4),  # 0",
        "  Sequential(",
        "    Linear(4, 4),  # 0",
        "    Tanh(),  # 1",
        "  ),  # 1",
        "  LastStep(),  # 2",
        "  Linear(4, 1),  # 3",
        ")",
    ]
    rebuilt = eval(text, NAMESPACE)
    assert repr(rebuilt) == text
    assert rebuilt.get_config() == model.get_config()


@pytest.mark.parametrize("make", [
    lambda m: rc.optim.SGD(m, lr=0.1, momentum=0.9, nesterov=True),
    lambda m: rc.optim.Adam([m, rc.Linear(2, 1)], betas=(0.8, 0.9), amsgrad=True),
    lambda m: rc.optim.Adam(m),
])
def test_optimizer_repr_rebuilds_the_hyperparameters(make):
    optimizer = make(rc.GRU(2, 3))
    rebuilt = eval(repr(optimizer), NAMESPACE)
    assert type(rebuilt) is type(optimizer)
    assert rebuilt._hyperparameters() == optimizer._hyperparameters()
    assert repr(rebuilt) == repr(optimizer)


def test_py_typed_ships_with_the_package():
    root = pathlib.Path(rc.__file__).parent
    assert (root / "py.typed").is_file()
    pyproject = pathlib.Path(__file__).parents[2] / "pyproject.toml"
    if pyproject.is_file():
        assert '"py.typed"' in pyproject.read_text()


API_DOC = pathlib.Path(__file__).parents[2] / "docs" / "api.md"


@pytest.mark.skipif(not API_DOC.is_file(), reason="docs/api.md is not in this installation")
def test_every_rc_name_in_the_api_reference_exists():
    import importlib
    # in prose backticks and in code blocks alike
    names = {name.rstrip(".") for name in re.findall(r"\brc\.([A-Za-z_][\w.]*)", API_DOC.read_text())}
    assert names
    missing = []
    for dotted in sorted(names):
        target = rc
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not hasattr(target, part):
                try:  # a submodule not imported by rnncore itself (rnncore.torch)
                    target = importlib.import_module("rnncore." + ".".join(parts[:i + 1]))
                    continue
                except ImportError:
                    missing.append(dotted)
                    break
            target = getattr(target, part)
    assert not missing, missing


@pytest.mark.parametrize("cls", [rc.RNN, rc.LSTM, rc.GRU, rc.JordanRNN], ids=lambda c: c.__name__)
def test_layer_docstring_examples_run(cls):
    assert_examples_run(cls, recurse=False)
