"""Constant folding for ONNX import: evaluate, in numpy, nodes whose inputs are all known at compile time.

Exporters compute shapes at run time (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) and write scalars as
Constant nodes; with static shapes all of that is known when compiling, so the frontend folds it here and
the device never sees it. ``fold`` returns the outputs, or raises ``NotFoldable`` for an op it does not know.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from onnx import helper, numpy_helper


class NotFoldable(Exception):
    pass


def _axes(a: dict[str, Any], ins: Sequence[np.ndarray | None], k: int, rank: int) -> list[int] | None:
    """Axes from input k (newer opsets) or the 'axes' attribute, normalised; None when absent."""
    if len(ins) > k and ins[k] is not None:
        ax = [int(v) for v in np.asarray(ins[k]).reshape(-1)]
    elif "axes" in a:
        ax = [int(v) for v in a["axes"]]
    else:
        return None
    return [v + rank if v < 0 else v for v in ax]


def _unsqueeze(a, ins):
    x = ins[0]
    ax = _axes(a, ins, 1, x.ndim + len(_axes(a, ins, 1, 0) or []))
    out = x
    for v in sorted(ax or []):
        out = np.expand_dims(out, v)
    return out


def _squeeze(a, ins):
    x = ins[0]
    ax = _axes(a, ins, 1, x.ndim)
    return np.squeeze(x, axis=tuple(ax)) if ax else np.squeeze(x)


def slice_bounds(shape: Sequence[int], starts, ends, axes, steps) -> tuple[list[int], list[int], list[int]]:
    """Per-axis (start, count, step) of an ONNX Slice, clamped as the spec says (positive steps only)."""
    rank = len(shape)
    st = [0] * rank
    cnt = list(shape)
    sp = [1] * rank
    axes = list(range(len(starts))) if axes is None else [int(v) + rank if v < 0 else int(v) for v in axes]
    steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
    for ax, s, e, k in zip(axes, starts, ends, steps, strict=True):
        d = shape[ax]
        if k < 1:
            raise ValueError(f"Slice with step {k} is not supported (only positive steps)")
        s, e = int(s), int(e)
        s = max(0, min(d, s + d if s < 0 else s))
        e = max(0, min(d, e + d if e < 0 else e))
        st[ax], sp[ax] = s, k
        cnt[ax] = max(0, (e - s + k - 1) // k)
    return st, cnt, sp


def _slice(a, ins):
    x = ins[0]
    if len(ins) > 1:
        starts, ends = ins[1].reshape(-1), ins[2].reshape(-1)
        axes = ins[3].reshape(-1) if len(ins) > 3 and ins[3] is not None else None
        steps = ins[4].reshape(-1) if len(ins) > 4 and ins[4] is not None else None
    else:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    st, cnt, sp = slice_bounds(x.shape, starts, ends, axes, steps)
    return x[tuple(slice(s, s + (c - 1) * k + 1 if c else s, k) for s, c, k in zip(st, cnt, sp, strict=True))]


def _reshape(a, ins):
    x, shape = ins[0], [int(v) for v in ins[1].reshape(-1)]
    return x.reshape(resolve_reshape(x.shape, shape, bool(a.get("allowzero", 0))))


def resolve_reshape(src: Sequence[int], target: Sequence[int], allowzero: bool = False) -> tuple[int, ...]:
    out = [src[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise ValueError(f"reshape target {list(target)} has more than one -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(src))
        if known == 0 or total % known:
            raise ValueError(f"cannot reshape {tuple(src)} to {list(target)}")
        out[out.index(-1)] = total // known
    if int(np.prod(out)) != int(np.prod(src)):
        raise ValueError(f"cannot reshape {tuple(src)} to {list(target)}")
    return tuple(int(d) for d in out)


def _div(a, ins):
    x, y = ins
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        return np.trunc(x / y).astype(np.result_type(x, y))
    return x / y


def _cast(a, ins):
    return ins[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))


def _constant_of_shape(a, ins):
    v = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    return np.full([int(d) for d in ins[0].reshape(-1)], v.reshape(-1)[0], dtype=v.dtype)


def _reduce(fn):
    def go(a, ins):
        x = ins[0]
        ax = _axes(a, ins, 1, x.ndim)
        keep = bool(a.get("keepdims", 1))
        if not ax:
            if a.get("noop_with_empty_axes", 0):
                return x
            ax = list(range(x.ndim))
        return fn(x, axis=tuple(ax), keepdims=keep)

    return go


_FOLD: dict[str, Callable[[dict[str, Any], list[np.ndarray]], Any]] = {
    "Identity": lambda a, ins: ins[0],
    "Cast": _cast,
    "CastLike": lambda a, ins: ins[0].astype(ins[1].dtype),
    "Size": lambda a, ins: np.array(ins[0].size, np.int64),
    "Gather": lambda a, ins: np.take(ins[0], ins[1].astype(np.int64), axis=a.get("axis", 0)),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda a, ins: np.concatenate([np.atleast_1d(x) for x in ins], axis=a.get("axis", 0)),
    "Slice": _slice,
    "Reshape": _reshape,
    "Transpose": lambda a, ins: np.transpose(ins[0], a.get("perm")),
    "Expand": lambda a, ins: ins[0] * np.ones([int(d) for d in ins[1].reshape(-1)], ins[0].dtype),
    "Tile": lambda a, ins: np.tile(ins[0], [int(d) for d in ins[1].reshape(-1)]),
    "Range": lambda a, ins: np.arange(ins[0], ins[1], ins[2]).astype(np.result_type(ins[0], ins[1], ins[2])),
    "ConstantOfShape": _constant_of_shape,
    "Add": lambda a, ins: ins[0] + ins[1],
    "Sub": lambda a, ins: ins[0] - ins[1],
    "Mul": lambda a, ins: ins[0] * ins[1],
    "Div": _div,
    "Pow": lambda a, ins: np.power(ins[0], ins[1]).astype(ins[0].dtype),
    "Neg": lambda a, ins: -ins[0],
    "Abs": lambda a, ins: np.abs(ins[0]),
    "Sqrt": lambda a, ins: np.sqrt(ins[0]),
    "Reciprocal": lambda a, ins: 1 / ins[0],
    "Floor": lambda a, ins: np.floor(ins[0]),
    "Ceil": lambda a, ins: np.ceil(ins[0]),
    "Max": lambda a, ins: np.maximum.reduce(ins),
    "Min": lambda a, ins: np.minimum.reduce(ins),
    "Equal": lambda a, ins: np.equal(ins[0], ins[1]),
    "Less": lambda a, ins: np.less(ins[0], ins[1]),
    "Greater": lambda a, ins: np.greater(ins[0], ins[1]),
    "Not": lambda a, ins: np.logical_not(ins[0]),
    "And": lambda a, ins: np.logical_and(ins[0], ins[1]),
    "Or": lambda a, ins: np.logical_or(ins[0], ins[1]),
    "Where": lambda a, ins: np.where(ins[0], ins[1], ins[2]),
    "ReduceProd": _reduce(np.prod),
    "ReduceSum": _reduce(np.sum),
    "ReduceMean": _reduce(np.mean),
    "ReduceMax": _reduce(np.max),
    "ReduceMin": _reduce(np.min),
}

FOLDABLE = frozenset(_FOLD) | {"Shape", "Constant"}


def fold(op: str, attrs: dict[str, Any], ins: list[np.ndarray | None]) -> list[np.ndarray]:
    fn = _FOLD.get(op)
    if fn is None:
        raise NotFoldable(op)
    return [np.asarray(fn(attrs, ins))]


def shape_of(shape: Sequence[int], attrs: dict[str, Any]) -> np.ndarray:
    """ONNX Shape (with the opset-15 start/end attributes) of a tensor whose shape is known."""
    rank = len(shape)
    s = attrs.get("start", 0)
    e = attrs.get("end", rank)
    s = max(0, min(rank, s + rank if s < 0 else s))
    e = max(0, min(rank, e + rank if e < 0 else e))
    return np.array(list(shape)[s:e], np.int64)
