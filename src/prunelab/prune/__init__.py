"""Pruning: unstructured weight masks (:mod:`prunelab.prune.unstructured`) and structured channel
pruning (:mod:`prunelab.prune.structured`). Each subpackage is imported on its own; this package
imports neither, so loading one does not load the other."""
