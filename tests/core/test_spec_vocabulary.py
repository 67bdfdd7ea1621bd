"""The cell vocabulary of core/spec.py and every copy of it that may not import core: the
kind and activation codes of the Cython backend, its .pyx and C sources and the numba
kernels; the gate orders of the interchange formats; the features each format refuses."""
import io
import math
import pathlib
import re

import numpy as np
import pytest

import rnncore as rc
from rnncore.core import spec as vocabulary
from rnncore.core.spec import (ACTIVATION_CODES, ACTIVATIONS, FEATURES, GATES, KIND_CODES, KINDS, OUTPUT_ACTIVATIONS,
                               CellSpec, init_bound)
from rnncore.interop import _gates, keras, onnx

from cases import VARIANT_IDS, VARIANTS, build

ROOT = pathlib.Path(__file__).resolve().parents[2]
CYTHON_SOURCES = sorted((ROOT / "src" / "rnncore" / "backends" / "cython").glob("*.p[xy][dx]"))
C_SOURCES = sorted((ROOT / "csrc").glob("*.h")) + sorted((ROOT / "csrc").glob("*.inc"))
I, H = 3, 4


def spec_of(variant, **more):
    _, cls, kwargs = VARIANTS[VARIANT_IDS.index(variant)]
    return build(cls, kwargs, I, H, **more).specs[0]


# -- the integer codes ------------------------------------------------------------------

def test_codes_number_every_kind_and_activation_once():
    assert set(KIND_CODES) == set(KINDS)
    assert set(ACTIVATION_CODES) == set(ACTIVATIONS) | set(OUTPUT_ACTIVATIONS)
    for codes in (KIND_CODES, ACTIVATION_CODES):
        assert sorted(codes.values()) == list(range(len(codes)))


def source_codes(pattern, paths):
    """{name (lower case): code} of every `NAME = <int>` the pattern finds in the files,
    refusing a name given two different codes."""
    found = {}
    for path in paths:
        for name, code in re.findall(pattern, path.read_text()):
            assert found.setdefault(name.lower(), int(code)) == int(code), f"{path.name}: {name} numbered twice"
    return found


def test_cython_backend_codes_match_spec():
    backend = pytest.importorskip("rnncore.backends.cython.backend")
    assert backend._KINDS == KIND_CODES
    assert backend._ACTIVATIONS == ACTIVATION_CODES


def test_compiled_sources_codes_match_spec():
    # the Cython module keeps its codes as compile-time constants and exposes none, so
    # they are read from the sources the extension is built from
    assert CYTHON_SOURCES and C_SOURCES
    kinds = "|".join(kind.upper() for kind in KINDS)
    activations = "|".join(name.upper() for name in ACTIVATION_CODES)
    assert source_codes(rf"\b(?:RC_)?(?:KIND_)?({kinds})\s*=\s*(\d+)\b", CYTHON_SOURCES + C_SOURCES) == KIND_CODES
    assert source_codes(rf"\bRC_({activations})\s*=\s*(\d+)\b", C_SOURCES) == ACTIVATION_CODES
    assert set(source_codes(rf"\b(?:RC_)?({activations})\s*=\s*(\d+)\b", CYTHON_SOURCES).items()) \
        <= set(ACTIVATION_CODES.items())


def test_numba_codes_match_spec():
    pytest.importorskip("numba")
    from rnncore.backends.numba import backend, kernels
    assert {name: getattr(kernels, name.upper()) for name in ACTIVATION_CODES} == ACTIVATION_CODES
    assert backend.ACTIVATION_CODES == ACTIVATION_CODES


# -- gates and parameters ---------------------------------------------------------------

GATE_ORDERS = {"rnn_tanh": "a", "rnn_relu": "a", "lstm": "ifgo", "lstm_proj": "ifgo", "lstm_peephole": "ifgo",
               "lstm_cifg": "igo", "lstm_all": "igo", "gru": "rzn", "gru_cho": "rzn", "jordan_identity": "a",
               "jordan_tanh": "a", "jordan_sigmoid": "a"}

# recorded from 0.1.0 (I = 3, H = 4, bias=True): names, shapes and order, which is also
# the order of the initialiser's draws, so a change here changes every seeded layer
PARAM_SHAPES = {
    "rnn_tanh": {"weight_ih": (4, 3), "weight_hh": (4, 4), "bias_ih": (4,), "bias_hh": (4,)},
    "rnn_relu": {"weight_ih": (4, 3), "weight_hh": (4, 4), "bias_ih": (4,), "bias_hh": (4,)},
    "lstm": {"weight_ih": (16, 3), "weight_hh": (16, 4), "bias_ih": (16,), "bias_hh": (16,)},
    "lstm_proj": {"weight_ih": (16, 3), "weight_hh": (16, 2), "bias_ih": (16,), "bias_hh": (16,),
                  "weight_hr": (2, 4)},
    "lstm_peephole": {"weight_ih": (16, 3), "weight_hh": (16, 4), "bias_ih": (16,), "bias_hh": (16,),
                      "weight_ci": (4,), "weight_cf": (4,), "weight_co": (4,)},
    "lstm_cifg": {"weight_ih": (12, 3), "weight_hh": (12, 4), "bias_ih": (12,), "bias_hh": (12,)},
    "lstm_all": {"weight_ih": (12, 3), "weight_hh": (12, 2), "bias_ih": (12,), "bias_hh": (12,),
                 "weight_hr": (2, 4), "weight_ci": (4,), "weight_co": (4,)},
    "gru": {"weight_ih": (12, 3), "weight_hh": (12, 4), "bias_ih": (12,), "bias_hh": (12,)},
    "gru_cho": {"weight_ih": (12, 3), "weight_hh": (12, 4), "bias_ih": (12,), "bias_hh": (12,)},
    "jordan_identity": {"weight_ih": (4, 3), "weight_hh": (4, 2), "bias_ih": (4,), "bias_hh": (4,),
                        "weight_ho": (2, 4), "bias_ho": (2,)},
    "jordan_tanh": {"weight_ih": (4, 3), "weight_hh": (4, 3), "bias_ih": (4,), "bias_hh": (4,),
                    "weight_ho": (3, 4), "bias_ho": (3,)},
    "jordan_sigmoid": {"weight_ih": (4, 3), "weight_hh": (4, 2), "bias_ih": (4,), "bias_hh": (4,),
                       "weight_ho": (2, 4), "bias_ho": (2,)},
}


def test_every_kind_has_distinct_gate_letters():
    assert set(GATES) == set(KINDS)
    for letters in (*GATES.values(), vocabulary.COUPLED_LSTM_GATES):
        assert len(set(letters)) == len(letters)
    assert set(vocabulary.COUPLED_LSTM_GATES) < set(GATES["lstm"])


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_gates_and_parameter_shapes_per_variant(variant):
    spec = spec_of(variant)
    assert spec.gates == GATE_ORDERS[variant]
    assert spec.num_gates == len(spec.gates)
    assert list(spec.param_shapes().items()) == list(PARAM_SHAPES[variant].items())
    without_bias = {name: shape for name, shape in PARAM_SHAPES[variant].items() if not name.startswith("bias")}
    assert list(spec_of(variant, bias=False).param_shapes().items()) == list(without_bias.items())


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_layers_draw_within_the_bound(variant):
    layer = build(*VARIANTS[VARIANT_IDS.index(variant)][1:], I, H, seed=3)
    assert init_bound(H) == 1 / math.sqrt(H)
    drawn = np.concatenate([value.ravel() for value in layer.parameters().values()])
    assert np.abs(drawn).max() <= init_bound(H)
    assert np.abs(drawn).max() > 0.9 * init_bound(H)  # the bound is used, not a smaller one


# -- features ---------------------------------------------------------------------------

FEATURES_USED = {"rnn_tanh": set(), "rnn_relu": {"relu"}, "lstm": set(), "lstm_proj": {"proj_size"},
                 "lstm_peephole": {"peephole"}, "lstm_cifg": {"coupled_input_forget"},
                 "lstm_all": {"proj_size", "peephole", "coupled_input_forget"}, "gru": {"reset_after"},
                 "gru_cho": set(), "jordan_identity": set(), "jordan_tanh": {"relu"}, "jordan_sigmoid": set()}


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_features_per_variant(variant):
    spec = spec_of(variant)
    assert spec.features() == frozenset(FEATURES_USED[variant])
    assert spec.unsupported(FEATURES) == ()
    assert spec.unsupported(()) == tuple(name for name in FEATURES if name in FEATURES_USED[variant])


def test_unsupported_lists_features_in_order_and_options_name_them():
    spec = CellSpec("lstm", I, H, proj_size=2, peephole=True, coupled_input_forget=True)
    assert spec.unsupported({"peephole"}) == ("proj_size", "coupled_input_forget")
    assert [spec.option(name) for name in spec.unsupported(())] == \
        ["proj_size=2", "peephole=True", "coupled_input_forget=True"]
    assert CellSpec("rnn", I, H, nonlinearity="relu").option("relu") == "nonlinearity='relu'"


FORMATS = [("keras", keras._EXPRESSIBLE, keras._KERAS_CLASSES, _gates.KERAS_GATES),
           ("onnx", onnx._EXPRESSIBLE, onnx._OPERATORS, _gates.ONNX_GATES)]


@pytest.mark.parametrize("name, expressible, kinds, orders", FORMATS, ids=[f[0] for f in FORMATS])
def test_format_tables_speak_the_vocabulary(name, expressible, kinds, orders):
    assert set(expressible) == set(kinds) == set(orders) <= set(KINDS)
    for kind, features in expressible.items():
        assert set(features) <= set(FEATURES), f"{name} {kind}: {set(features) - set(FEATURES)}"
        assert set(orders[kind]) == set(GATES[kind]), f"{name} {kind}: gates {orders[kind]}"


def export(layer):
    pytest.importorskip("onnx")
    return rc.onnx.export(layer, io.BytesIO())


@pytest.mark.parametrize("variant", VARIANT_IDS)
@pytest.mark.parametrize("name, convert", [("keras", rc.keras.to_keras_weights), ("onnx", export)],
                         ids=["keras", "onnx"])
def test_formats_refuse_exactly_what_they_cannot_express(variant, name, convert):
    _, expressible, kinds, _ = FORMATS[[f[0] for f in FORMATS].index(name)]
    _, cls, kwargs = VARIANTS[VARIANT_IDS.index(variant)]
    layer = build(cls, kwargs, I, H)
    spec = layer.specs[0]
    if spec.kind in kinds and not spec.unsupported(expressible[spec.kind]):
        convert(layer)
        return
    with pytest.raises(ValueError) as refused:
        convert(layer)
    for feature in spec.unsupported(expressible.get(spec.kind, FEATURES)):
        assert feature in str(refused.value)
    if spec.kind not in kinds:
        assert vocabulary.KIND_NAMES[spec.kind] in str(refused.value)


# -- gate orders ------------------------------------------------------------------------

@pytest.mark.parametrize("variant, orders", [
    pytest.param(variant, orders, id=f"{variant}-{name}") for variant in VARIANT_IDS
    for name, orders in (("keras", _gates.KERAS_GATES), ("onnx", _gates.ONNX_GATES))
    if spec_of(variant).kind in orders])
def test_gate_orders_round_trip(variant, orders):
    spec = spec_of(variant)
    native = np.arange(spec.num_gates * H * 2.0).reshape(spec.num_gates * H, 2)
    theirs = _gates.from_native(native, spec, orders)
    assert theirs.shape == (len(orders[spec.kind]) * H, 2)
    np.testing.assert_array_equal(_gates.to_native(theirs, spec, orders), native)
    blocks = dict(zip(orders[spec.kind], np.split(theirs, len(orders[spec.kind]))))
    for gate, block in zip(spec.gates, np.split(native, spec.num_gates)):
        np.testing.assert_array_equal(blocks.pop(gate), block)
    for block in blocks.values():  # ONNX's forget block of a coupled LSTM
        assert not block.any()


def test_keras_keeps_its_public_gate_names():
    assert rc.keras.reorder_gates is _gates.reorder_gates
    assert rc.keras.KERAS_GATES is _gates.KERAS_GATES


def test_every_copy_of_the_layer_norm_epsilon_is_the_spec_s():
    from rnncore.backends.reference import cells
    from rnncore.core.spec import LAYER_NORM_EPS
    assert cells.LAYER_NORM_EPS == LAYER_NORM_EPS
    defined = re.findall(r"#define\s+RC_LAYER_NORM_EPS\s+(\S+)", "\n".join(p.read_text() for p in C_SOURCES))
    assert [float(value) for value in defined] == [LAYER_NORM_EPS]
    if "numba" in rc.backends():
        from rnncore.backends.numba import kernels
        assert kernels.LAYER_NORM_EPS == LAYER_NORM_EPS
