"""Training data: the bundled 8x8 digits (no download), or a user's .npz with arrays x and y.

The bundled set is resized to what the model's input wants: [8, 8] or 64 features as is, square inputs
(28x28 and so on) by bilinear resampling, and channel dimensions by repetition. Pixels are scaled to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PoetcError
from .resources import data_dir


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # [N, *input_shape] float32
    y: np.ndarray  # [N] int64
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    name: str
    q8: tuple[float, float] | None = None  # (scale, bias) when every x == scale * uint8 + bias exactly


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resampling of [N, H0, W0] images (align corners off, like most image libraries)."""
    _n, h0, w0 = img.shape
    ys = np.clip((np.arange(h) + 0.5) * h0 / h - 0.5, 0, h0 - 1)
    xs = np.clip((np.arange(w) + 0.5) * w0 / w - 0.5, 0, w0 - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h0 - 1)
    x1 = np.minimum(x0 + 1, w0 - 1)
    wy = (ys - y0)[None, :, None]
    wx = (xs - x0)[None, None, :]
    a = img[:, y0][:, :, x0]
    b = img[:, y0][:, :, x1]
    c = img[:, y1][:, :, x0]
    d = img[:, y1][:, :, x1]
    return (a * (1 - wy) * (1 - wx) + b * (1 - wy) * wx + c * wy * (1 - wx) + d * wy * wx).astype(np.float32)


def parse_digits(spec: str) -> frozenset[int] | None:
    """``digits`` -> None (all ten); ``digits:5-9`` or ``digits:0,2,4`` -> that subset of the bundled digits."""
    if spec == "digits":
        return None
    body = spec.removeprefix("digits:")
    out: set[int] = set()
    try:
        for part in body.split(","):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise PoetcError(f"--data {spec!r}: expected digits, digits:5-9 or digits:0,2,4") from None
    if not out or min(out) < 0 or max(out) > 9:
        raise PoetcError(f"--data {spec!r}: the bundled digits are 0 to 9")
    return frozenset(out)


def digits_for(
    shape: tuple[int, ...],
    classes: int,
    test_fraction: float = 0.2,
    seed: int = 0,
    only: frozenset[int] | None = None,
) -> Dataset:
    """The bundled digits, shaped for one sample of ``shape`` (without the batch dimension); ``only``: keep
    these digits (labels stay the digits themselves, so a 10-class model sees its usual classes)."""
    if classes < 10:
        raise PoetcError(
            f"the bundled digits have 10 classes but the model has {classes} outputs; pass --data"
        )
    with np.load(data_dir() / "digits.npz") as z:
        img = z["x"].astype(np.float32)  # [N, 8, 8], 0..16
        y = z["y"].astype(np.int64)
    if only is not None:
        keep = np.isin(y, sorted(only))
        img, y = img[keep], y[keep]
    n_el = int(np.prod(shape))
    side = round(np.sqrt(n_el))
    q8 = None
    if n_el == 64:
        x = img.reshape(len(img), *shape) / 16.0
        q8 = (1.0 / 16.0, 0.0)
    elif len(shape) >= 2 and n_el % (shape[-1] * shape[-2]) == 0:
        h, w = shape[-2], shape[-1]
        r = _resize(img / 16.0, h, w)
        reps = n_el // (h * w)
        x = np.repeat(r[:, None], reps, axis=1).reshape(len(img), *shape)
    elif side * side == n_el:
        x = _resize(img / 16.0, side, side).reshape(len(img), *shape)
    else:
        raise PoetcError(f"the bundled digits cannot be shaped to the model input {list(shape)}; pass --data")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(len(x) * test_fraction)
    te, tr = order[:n_test], order[n_test:]
    name = "digits (bundled)" if only is None else f"digits {','.join(map(str, sorted(only)))} (bundled)"
    return Dataset(x[tr].astype(np.float32), y[tr], x[te].astype(np.float32), y[te], name, q8)


def load_npz(path: str | Path, shape: tuple[int, ...], classes: int) -> Dataset:
    p = Path(path)
    try:
        z = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise PoetcError(f"--data {p}: no such file") from None
    except IsADirectoryError:
        raise PoetcError(f"--data {p}: is a directory") from None
    except Exception as e:  # OSError, ValueError, zipfile.BadZipFile, EOFError: not an .npz we can read
        raise PoetcError(f"--data {p}: not a readable .npz file ({type(e).__name__}: {e})") from None
    try:
        with z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # an object array (pickles are never loaded)
        raise PoetcError(f"--data {p}: not a plain numeric .npz file ({str(e).splitlines()[0]})") from None
    except Exception as e:  # a truncated or damaged archive: zipfile, zlib and EOF errors alike
        raise PoetcError(f"--data {p}: damaged or truncated .npz file ({type(e).__name__}: {e})") from None
    out = []
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if xk not in arrays and xk == "x":
            raise PoetcError(f"--data {p}: missing array 'x' (has: {', '.join(arrays) or 'nothing'})")
        if xk not in arrays:
            out += [None, None]
            continue
        if yk not in arrays:
            raise PoetcError(f"--data {p}: array {xk!r} has no matching {yk!r}")
        x, y = arrays[xk], arrays[yk]
        if x.ndim == 0 or not same_sample_shape(x.shape[1:], shape):
            raise PoetcError(
                f"--data {p}: {xk!r} has shape {list(x.shape)}, expected [N, "
                f"{', '.join(map(str, shape))}] (the model input without the batch dimension; dimensions of "
                "size 1 may differ)"
            )
        x = x.reshape(x.shape[0], *shape)
        if x.dtype.kind not in "fiu":
            raise PoetcError(f"--data {p}: {xk!r} has dtype {x.dtype}, expected numbers")
        if not np.all(np.isfinite(x)):
            raise PoetcError(f"--data {p}: {xk!r} holds NaN or infinite values")
        x32 = x.astype(np.float32)
        if not np.all(np.isfinite(x32)):  # finite here, infinite as the float32 the target computes with
            big = float(np.max(np.abs(x.astype(np.float64))))
            raise PoetcError(
                f"--data {p}: {xk!r} holds values that overflow float32 (largest magnitude {big:.3g}, float32 "
                f"holds up to {float(np.finfo(np.float32).max):.3g})"
            )
        if y.shape != (x.shape[0],):
            raise PoetcError(f"--data {p}: {yk!r} has shape {list(y.shape)}, expected [{x.shape[0]}]")
        if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
            raise PoetcError(f"--data {p}: {yk!r} must hold integer class labels (dtype {y.dtype})")
        yi = y.astype(np.int64)
        bad = np.flatnonzero((yi < 0) | (yi >= classes))
        if bad.size:
            raise PoetcError(
                f"--data {p}: {yk}[{bad[0]}] = {yi[bad[0]]} is out of range for {classes} classes"
            )
        if x.shape[0] == 0:
            raise PoetcError(f"--data {p}: {xk!r} is empty")
        out += [x32, yi]
    return Dataset(out[0], out[1], out[2], out[3], str(p), None)


def same_sample_shape(have: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Whether samples shaped ``have`` are samples shaped ``want``: the same sizes once dimensions of size 1 are
    dropped ([8, 8] for a model that takes [1, 8, 8], [64] for [64, 1]), so a reshape moves no element."""
    return [d for d in have if d != 1] == [d for d in want if d != 1]


def q8_params(x: np.ndarray) -> tuple[float, float] | None:
    """(scale, 0) such that x == float32(scale * q) exactly for some uint8 q, if such a scale exists.

    The bias is kept 0 so that the target's ``scale * q + bias`` is one rounding with or without FMA.
    """
    x = np.asarray(x, np.float32)
    if x.size == 0 or float(x.min()) < 0:
        return None
    hi = float(x.max())
    for scale in {hi / 255, hi / 16, 1 / 255, 1 / 16, 1.0} - {0.0}:
        s = np.float32(scale)
        q = np.round(x / s)
        if q.max() <= 255 and np.array_equal(s * q.astype(np.float32), x):
            return (float(s), 0.0)
    return None
