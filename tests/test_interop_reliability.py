"""Reliability at the edges to other libraries: gradient clipping with a non-finite value
anywhere (against torch.nn.utils), ONNX graphs that rnncore cannot reproduce exactly
(each refused, naming the node), and Keras layers whose configuration changes the math
(each refused, naming what was given)."""
import math

import numpy as np
import pytest

import rnncore as rc

# -- clip_grad_norm_ with NaN or Inf in any array, at any element -------------------------

CLIP_SHAPES = [(3, 2), (5,), (2, 2)]


def clip_positions():
    """(array index, flat element index) of the first, a middle and the last element of
    every array."""
    return [(a, e) for a, shape in enumerate(CLIP_SHAPES)
            for e in sorted({0, math.prod(shape) // 2, math.prod(shape) - 1})]


def grads_with(bad, where):
    rng = np.random.default_rng(5)
    grads = {f"g{a}": rng.standard_normal(shape) for a, shape in enumerate(CLIP_SHAPES)}
    array, element = where
    grads[f"g{array}"].reshape(-1)[element] = bad
    return grads


@pytest.mark.parametrize("where", clip_positions(), ids=str)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("norm_type", [math.inf, 2.0, 1.0])
def test_clip_grad_norm_sees_a_nonfinite_value_anywhere(norm_type, bad, where):
    torch = pytest.importorskip("torch")
    grads = grads_with(bad, where)
    before = {k: v.copy() for k, v in grads.items()}
    with pytest.raises(RuntimeError, match=f"total norm of order {norm_type} is (nan|inf)"):
        rc.clip_grad_norm_(grads, 1.0, norm_type, error_if_nonfinite=True)
    for name, value in grads.items():  # refused before any gradient is scaled
        np.testing.assert_array_equal(value, before[name], err_msg=name)

    params = []
    for value in grads.values():
        param = torch.zeros(value.shape, dtype=torch.float64, requires_grad=True)
        param.grad = torch.tensor(value)
        params.append(param)
    with pytest.raises(RuntimeError):  # torch refuses the same gradients
        torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type, error_if_nonfinite=True)
    # without the flag: the same total (NaN wherever a NaN is) and the same scaled arrays
    expected = float(torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type))
    with np.errstate(invalid="ignore"):
        total = rc.clip_grad_norm_(grads, 1.0, norm_type)
    assert math.isnan(total) == math.isnan(bad) == math.isnan(expected)
    assert total == expected or math.isnan(total)
    for value, param in zip(grads.values(), params):
        np.testing.assert_array_equal(value, param.grad.numpy())
