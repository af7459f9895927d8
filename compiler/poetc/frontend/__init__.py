"""Frontend: a model (an ONNX file or a zoo name) -> a ``graph.ir.Model`` (forward graph + initial values).

In: an ONNX file path or a zoo name, a batch size. Out: ``Model`` (``graph/ir.py``).
- ``importer``: ONNX import and export of trained weights back into the ONNX model;
- ``constfold``: compile-time evaluation of shape arithmetic and constants;
- ``zoo``: the built-in models, built as ONNX;
- ``quantize``: byte inputs (``--input-u8``), a graph rewrite on a ``Model``.

May import: ``graph``, the ground floor (``boards``, ``data``, ``errors``, ``fmt``, ``resources``).
The package exposes its front door (``load``, ``from_onnx``, ``export_onnx``) so callers write
``frontend.load(...)``.
"""

from .importer import LAYER_OPS, SUPPORTED_OPS, export_onnx, from_onnx, load

__all__ = ["LAYER_OPS", "SUPPORTED_OPS", "export_onnx", "from_onnx", "load"]
