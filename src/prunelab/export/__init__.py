"""Deployment forms of a pruned model: the deploy artefact, ONNX files and sparse-kernel inference.

* :func:`build_deploy` / :func:`save_deploy` / :func:`load_deploy`: the fastest form for this CPU
  (folded graph in the native executor or in dense ONNX Runtime, chosen by measurement).
* :mod:`prunelab.export.backends` and :mod:`prunelab.export.bench`: latency on every back-end.

* :func:`to_onnx` exports a (compressed or masked) model and checks it against ONNX Runtime.
* :func:`convert_to_sparse` runs masked layers with sparse kernels where measured faster;
  :func:`save_sparse` / :func:`load_sparse` store and rebuild it without pickling modules.
"""

from prunelab.export.backends import backend_names, get_backend, measure_backend, register_backend
from prunelab.export.deploy import DeployModel, DeployReport, build_deploy, load_deploy, save_deploy
from prunelab.export.onnx import OnnxExport, check_onnx, onnx_bytes_of, ort_session, relative_error, to_onnx
from prunelab.export.sparse import (
    LayerChoice,
    SparseConv1d,
    SparseConv2d,
    SparseLinear,
    SparseModel,
    SparseReport,
    apply_choices,
    convert_to_sparse,
    has_sparse_modules,
    load_sparse,
    save_sparse,
    sparse_report_of,
)

__all__ = [
    "DeployModel",
    "DeployReport",
    "backend_names",
    "build_deploy",
    "get_backend",
    "load_deploy",
    "measure_backend",
    "register_backend",
    "save_deploy",
    "LayerChoice",
    "OnnxExport",
    "SparseConv1d",
    "SparseConv2d",
    "SparseLinear",
    "SparseModel",
    "SparseReport",
    "apply_choices",
    "check_onnx",
    "convert_to_sparse",
    "has_sparse_modules",
    "load_sparse",
    "onnx_bytes_of",
    "ort_session",
    "relative_error",
    "save_sparse",
    "sparse_report_of",
    "to_onnx",
]
