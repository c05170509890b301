"""A linear layer split along its last axis becomes one linear layer per piece, computing the same."""

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from sd_ovopt.export.split_linear import split_chunked_linears

ROWS, COLS = 12, 8
RNG = np.random.default_rng(0)


def _weight(kind):
    """A weight chain of ROWS x COLS as the exports write them."""
    if kind == "f32":
        return ops.constant(RNG.standard_normal((ROWS, COLS)).astype(np.float32))
    if kind == "f16":
        return ops.convert(ops.constant(RNG.standard_normal((ROWS, COLS)).astype(np.float16)), "f32")
    ints = ops.convert(ops.constant(RNG.integers(-127, 128, (ROWS, COLS)).astype(np.int8)), "f32")
    if kind == "int8-zero-point":  # 8-bit weight compression: (w - zero point) * scale
        ints = ops.subtract(ints, ops.constant(RNG.integers(-3, 4, (ROWS, 1)).astype(np.float32)))
    scale = RNG.uniform(0.001, 0.01, (ROWS, 1)) if kind != "int8-tensor-scale" else np.array(0.004)
    return ops.multiply(ints, ops.constant(scale.astype(np.float32)))


def _geglu(kind, *, bias=True, pieces=(6, 6), axis=-1, read_twice=False, transposed=False):
    x = ops.parameter([2, 5, COLS], np.float32, name="x")
    if transposed:  # x @ W with W stored as [COLS, ROWS]: not a linear layer's layout
        y = ops.matmul(x, ops.constant(RNG.standard_normal((COLS, ROWS)).astype(np.float32)), False, False)
    else:
        y = ops.matmul(x, _weight(kind), False, True)
    if bias:
        y = ops.add(y, ops.constant(RNG.standard_normal((1, 1, ROWS)).astype(np.float32)))
    split = ops.variadic_split(y, axis, list(pieces)).outputs()
    if pieces[0] == pieces[1]:  # GEGLU: value times the GELU of the gate
        outputs = [ops.multiply(split[0], ops.gelu(split[1], "erf")).output(0), *split[2:]]
    else:
        outputs = [split[0], ops.gelu(split[1], "erf").output(0), *split[2:]]
    if read_twice:
        outputs.append(ops.relu(y).output(0))
    return ov.Model(outputs, [x])


def _run(model, x):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [compiled(x)[out] for out in compiled.outputs]


@pytest.mark.parametrize("kind", ["f32", "f16", "int8", "int8-zero-point", "int8-tensor-scale"])
@pytest.mark.parametrize("bias", [True, False])
def test_the_split_is_gone_and_the_outputs_are_equal(kind, bias):
    model = _geglu(kind, bias=bias)
    x = RNG.standard_normal((2, 5, COLS)).astype(np.float32)
    before = _run(model, x)
    assert split_chunked_linears(model) == 1
    assert "VariadicSplit" not in {op.get_type_name() for op in model.get_ordered_ops()}
    for a, b in zip(before, _run(model, x), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_uneven_pieces_split_too():
    model = _geglu("int8", pieces=(4, 6, 2))
    x = RNG.standard_normal((2, 5, COLS)).astype(np.float32)
    before = _run(model, x)
    assert split_chunked_linears(model) == 1
    for a, b in zip(before, _run(model, x), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "variant",
    [{"axis": 1, "pieces": (2, 3)}, {"read_twice": True}, {"transposed": True}],
    ids=["not-the-last-axis", "read-elsewhere", "weight-not-transposed"],
)
def test_other_splits_are_left_alone(variant):
    model = _geglu("f32", **variant)
    x = RNG.standard_normal((2, 5, COLS)).astype(np.float32)
    before = _run(model, x)
    assert split_chunked_linears(model) == 0
    for a, b in zip(before, _run(model, x), strict=True):
        np.testing.assert_array_equal(b, a)


def test_the_tiny_unet_computes_the_same_without_its_splits(tiny_pipe):
    from sd_ovopt._convert import convert_unet, unet_example_inputs

    shape = {"batch": 2, "latent_height": 16, "latent_width": 16, "text_length": 77}
    model = convert_unet(tiny_pipe.unet, **shape)
    example = unet_example_inputs(tiny_pipe.unet, **shape)
    feed = {name: value.numpy() for name, value in example.items()}
    before = _run(model, feed)
    assert split_chunked_linears(model) >= 1  # every transformer block's GEGLU
    np.testing.assert_allclose(_run(model, feed)[0], before[0], rtol=1e-4, atol=1e-5)


def test_exported_unets_hold_no_split_linear(exported_tiny):
    model = ov.Core().read_model(exported_tiny / "unet" / "openvino_model.xml")
    assert split_chunked_linears(model) == 0  # the export already split them
