"""The regularised cells' options, checked once, and their random masks.

The layers and cells take `layer_norm`, `zoneout`, `recurrent_dropout` and
`weight_dropout` (API.md, "Regularised and normalised cells"). `options` checks them
and turns them into the `CellSpec` fields; `draw` draws, per training-mode call, what a
layer's directions need from the layer's seeded generator, in one fixed order, so that
two layers built with the same seed draw the same masks. Layer norm and zoneout's
evaluation form are part of the cell and need nothing here; the zoneout and recurrent
masks go to the backends (`contract.MASKS`); weight dropout is applied here, to the
W_hh the backend sees, and to its gradient on the way back.
"""
import math
import numbers

import numpy as np

from .spec import REGULARISED_KINDS


def _probability(name, value, closed):
    """A probability in [0, 1] (`closed`) or [0, 1), as a float."""
    top = "1]" if closed else "1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            0 <= value <= 1 if closed else 0 <= value < 1):
        raise ValueError(f"{name}: expected a number in [0, {top}, got {value!r}")
    return float(value)


def _zoneout(kind, zoneout):
    """(p_h, p_c) from the `zoneout` argument: p, or for an LSTM p or (p_h, p_c)."""
    if kind == "lstm" and isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(f"zoneout: expected p or a pair (p_h, p_c), got {zoneout!r}")
        return _probability("zoneout[0]", zoneout[0], True), _probability("zoneout[1]", zoneout[1], True)
    if isinstance(zoneout, (tuple, list)):
        raise ValueError(f"zoneout: expected a number in [0, 1] (a pair is for an LSTM's h and c), got {zoneout!r}")
    p = _probability("zoneout", zoneout, True)
    return p, (p if kind == "lstm" else 0.0)


def options(kind, layer_norm=False, zoneout=0.0, recurrent_dropout=0.0, weight_dropout=0.0, reset_after=True):
    """The CellSpec fields of the regularised options of a `kind` cell, each checked:
    {"layer_norm", "zoneout_h", "zoneout_c", "recurrent_dropout", "weight_dropout"}.
    A ValueError names an option out of range or one the kind does not take."""
    if isinstance(layer_norm, (bool, np.bool_)):
        layer_norm = bool(layer_norm)
    else:
        raise TypeError(f"layer_norm: expected a bool, got {layer_norm!r}")
    zoneout_h, zoneout_c = _zoneout(kind, zoneout)
    fields = dict(layer_norm=layer_norm, zoneout_h=zoneout_h, zoneout_c=zoneout_c,
                  recurrent_dropout=_probability("recurrent_dropout", recurrent_dropout, False),
                  weight_dropout=_probability("weight_dropout", weight_dropout, False))
    used = {"layer_norm": layer_norm, "zoneout": zoneout_h > 0 or zoneout_c > 0,
            "recurrent_dropout": fields["recurrent_dropout"] > 0, "weight_dropout": fields["weight_dropout"] > 0}
    for option, on in used.items():
        if on and kind not in REGULARISED_KINDS[option]:
            raise ValueError(f"{option}: expected a cell kind among {list(REGULARISED_KINDS[option])}, got {kind!r}")
    if layer_norm and kind == "gru" and not reset_after:
        raise ValueError("layer_norm: expected reset_after=True (the reset-before GRU's candidate product needs "
                         "r, which needs the statistics of the whole gate vector), got reset_after=False")
    return fields


def config_zoneout(spec):
    """The `zoneout` constructor argument that gives `spec` back: p, or (p_h, p_c) for
    an LSTM whose two differ."""
    if spec.kind == "lstm" and spec.zoneout_h != spec.zoneout_c:
        return (spec.zoneout_h, spec.zoneout_c)
    return spec.zoneout_h


def random(spec):
    """Whether a training-mode call of `spec` draws masks."""
    return spec.zoneout or spec.recurrent_dropout > 0 or spec.weight_dropout > 0


def _below(rng, shape, p):
    """A boolean array of `shape`, each value True with probability p: 32 random bits a
    value against p's 32-bit threshold (exact to 2**-32), two values from each 64-bit
    draw of the generator. The draws are most of what a training call's masks cost, and
    `rng.random` spends a 64-bit draw on each value."""
    if p >= 1.0:
        return np.ones(shape, bool)
    count = math.prod(shape)
    # little-endian halves on every platform, so a seed gives the same masks everywhere
    bits = rng.bit_generator.random_raw((count + 1) // 2).astype("<u8", copy=False).view("<u4")
    return bits[:count].reshape(shape) < np.uint32(min(round(p * 2.0 ** 32), 2 ** 32 - 1))


def _kept(rng, shape, p, dtype):
    """An inverted-dropout mask: 1 / (1 - p) with probability 1 - p, else 0."""
    keep = 1.0 - p
    return _below(rng, shape, keep).astype(dtype) * np.asarray(1.0 / keep, dtype)


def draw(rng, spec, T, B, dtype, directions):
    """The masks of one training-mode call of one layer, per direction: ([masks for the
    backend], [W_hh's mask or None]). Drawn direction by direction, in the order
    weight, recurrent, zoneout h, zoneout c, each only when its option is on."""
    masks, weight_masks = [], []
    G, H, out = spec.num_gates, spec.hidden_size, spec.out_size
    for _ in range(directions):
        drawn = {}
        weight_masks.append(_kept(rng, (G * H, out), spec.weight_dropout, dtype) if spec.weight_dropout else None)
        if spec.recurrent_dropout:
            drawn["recurrent"] = _kept(rng, (B, out), spec.recurrent_dropout, dtype)
        if spec.zoneout_h:
            drawn["zoneout_h"] = _below(rng, (T, B, out), spec.zoneout_h).astype(dtype)
        if spec.kind == "lstm" and spec.zoneout_c:
            drawn["zoneout_c"] = _below(rng, (T, B, H), spec.zoneout_c).astype(dtype)
        masks.append(drawn)
    return masks, weight_masks


def dropped_weights(params, weight_masks):
    """The parameters a backend sees under weight dropout: per direction, W_hh * M
    (M holds 0 and 1 / (1 - p)) in place of W_hh, the rest as they are."""
    return [p if m is None else dict(p, weight_hh=p["weight_hh"] * m) for p, m in zip(params, weight_masks)]


def weight_gradients(grads, weight_masks):
    """The gradients of the layer's own W_hh from those of W_hh * M: times M, in place."""
    for g, m in zip(grads, weight_masks):
        if m is not None:
            g["weight_hh"] *= m
