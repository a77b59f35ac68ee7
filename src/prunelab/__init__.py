"""prunelab: a workbench for pruning neural networks in PyTorch.

One engine for structured (channel) and unstructured (weight) pruning, the protocols of
Crowley et al. (2018), Wang et al. (2020) and Gupta et al. (2022) as switches, targets in real
units (parameters, MACs, latency), and studies with multi-seed statistics.
"""

from prunelab.errors import PrunelabError

__version__ = "0.1.0"
__all__ = ["PrunelabError", "__version__"]
