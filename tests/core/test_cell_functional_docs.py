"""The cells' and the functional kernels' docstrings: numpydoc sections filled in from
their shared tables, and examples that run."""

import pytest

import rnncore as rc
from cases import assert_examples_run
from rnncore import functional

CELLS = [rc.RNNCell, rc.LSTMCell, rc.GRUCell]
FUNCTIONS = [getattr(functional, name) for name in functional.__all__]


@pytest.mark.parametrize("documented", CELLS + [functional, rc.warmup], ids=lambda d: d.__name__)
def test_docstring_examples_run(documented):
    assert_examples_run(documented)


@pytest.mark.parametrize("documented", CELLS + FUNCTIONS, ids=lambda d: d.__name__)
def test_docstrings_have_the_numpydoc_sections_and_no_unfilled_entry(documented):
    sections = ["Parameters", "Raises", "Examples"] + ([] if isinstance(documented, type) else ["Returns"])
    doc = documented.__doc__
    for section in sections:
        assert f"{section}\n    {'-' * len(section)}" in doc, (documented.__name__, section)
    assert "%(" not in doc


@pytest.mark.parametrize("method", ["__call__", "backward"])
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_cell_methods_document_parameters_returns_and_raises(cell, method):
    doc = getattr(cell, method).__doc__
    for section in ("Parameters", "Returns", "Raises"):
        assert f"{section}\n        {'-' * len(section)}" in doc, (cell.__name__, method, section)
    assert "%(" not in doc
