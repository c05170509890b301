"""One linear layer whose output is split along its last axis becomes one linear layer per piece.

A GEGLU feed-forward (every SD transformer block) projects to twice its width and chunks the result
into a value and a gate. In the IR that is ``MatMul -> Add(bias) -> VariadicSplit``; OpenVINO's CPU
plugin runs such a split as a reference kernel and cannot fuse the ``Gelu`` and ``Multiply`` that
follow into the matmul. Two matmuls on the row halves of the weight (and of its per-row scales and
bias) compute the same numbers, with the split gone and the element-wise tail fused: on SD-1.5's
UNet at 512x512 a few percent of a step. Weight chains of any export are handled: float constants,
``f16 -> f32`` converts, and the int8 ``Constant -> Convert [-> Subtract] -> Multiply`` of INT8 and
8-bit weight compression.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

__all__ = ["split_chunked_linears"]

logger = logging.getLogger(__name__)

#: The MatMul of a linear layer, ``x @ W.T``, as PyTorch's ``linear`` converts.
_LINEAR = {"transpose_a": False, "transpose_b": True}
_ARITHMETIC = {"Multiply": ops.multiply, "Subtract": ops.subtract, "Add": ops.add}


class _NotAWeight(Exception):
    """The matmul's second input is not a chain of constants this pass can cut into rows."""


def _rows(node: Any, rows: int, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of a weight chain of ``rows`` output channels (constants broadcast along rows are
    kept whole)."""
    kind = node.get_type_name()
    if kind == "Constant":
        data = node.get_data()
        return (
            ops.constant(np.ascontiguousarray(data[lo:hi])) if data.ndim and data.shape[0] == rows else node
        )
    if kind == "Convert":
        return ops.convert(
            _rows(node.input_value(0).get_node(), rows, lo, hi), node.get_output_element_type(0)
        )
    if kind in _ARITHMETIC:
        a, b = (_rows(value.get_node(), rows, lo, hi) for value in node.input_values())
        return _ARITHMETIC[kind](a, b)
    raise _NotAWeight(kind)


def _pieces(split: Any) -> list[int] | None:
    """The static sizes of a last-axis split, or ``None``."""
    axis = split.input_value(1).get_node()
    if axis.get_type_name() != "Constant":
        return None
    rank, value = split.get_input_partial_shape(0).rank, axis.get_data().reshape(-1)
    if not rank.is_static or value.size != 1 or int(value[0]) not in (-1, rank.get_length() - 1):
        return None
    sizes = [output.get_partial_shape()[-1] for output in split.outputs()]
    return [size.get_length() for size in sizes] if all(size.is_static for size in sizes) else None


def _split_one(split: Any) -> bool:
    """Rewrite one ``MatMul [-> Add(bias)] -> VariadicSplit(last axis)``; whether it matched."""
    source = split.input_value(0).get_node()
    chain = [source]  # the nodes whose output only the split may read
    bias = None
    if source.get_type_name() == "Add" and source.input_value(1).get_node().get_type_name() == "Constant":
        bias, source = source.input_value(1).get_node().get_data(), source.input_value(0).get_node()
        chain.append(source)
    if source.get_type_name() != "MatMul" or source.get_attributes() != _LINEAR:
        return False
    for node in chain:  # each feeds only the next one (a ShapeOf reads the shape only)
        readers = [target.get_node() for target in node.output(0).get_target_inputs()]
        if sum(reader.get_type_name() != "ShapeOf" for reader in readers) != 1:
            return False
    weight = source.input_value(1).get_node()
    if weight.get_output_partial_shape(0).rank.get_length() != 2:
        return False
    rows = weight.get_output_partial_shape(0)[0]
    pieces = _pieces(split)
    if pieces is None or not rows.is_static or sum(pieces) != rows.get_length():
        return False
    if bias is not None and (bias.shape[-1] != rows.get_length() or bias.size != rows.get_length()):
        return False
    try:
        bounds = list(itertools.pairwise(np.cumsum([0, *pieces])))
        weights = [_rows(weight, rows.get_length(), lo, hi) for lo, hi in bounds]
    except _NotAWeight:
        return False
    for k, (piece, (lo, hi)) in enumerate(zip(weights, bounds, strict=True)):
        out = ops.matmul(source.input_value(0), piece, False, True)
        if bias is not None:
            out = ops.add(out, ops.constant(np.ascontiguousarray(bias[..., lo:hi])))
        out.set_friendly_name(f"{split.get_friendly_name()}/piece{k}")
        for target in list(split.output(k).get_target_inputs()):
            target.replace_source_output(out.output(0))
    return True


def split_chunked_linears(model: ov.Model) -> int:
    """Replace every linear layer whose output is split along its last axis by one linear layer per
    piece, in place; return how many were replaced. The model computes the same function.

    Example:
        >>> import numpy as np, openvino as ov, openvino.opset13 as ops
        >>> x = ops.parameter([1, 4, 8], np.float32)
        >>> y = ops.matmul(x, ops.constant(np.ones((6, 8), np.float32)), False, True)
        >>> a, b = ops.variadic_split(y, -1, [3, 3]).outputs()
        >>> model = ov.Model([ops.multiply(a, ops.gelu(b, "erf"))], [x])
        >>> split_chunked_linears(model)
        1
    """
    count = sum(_split_one(op) for op in model.get_ordered_ops() if op.get_type_name() == "VariadicSplit")
    if count:
        model.validate_nodes_and_infer_types()
        logger.debug("split %d chunked linear layers", count)
    return count
