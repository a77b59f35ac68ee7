"""What goes into a model and what comes out: :class:`InputSpec` and :func:`logits_of`.

A zoo model takes one float tensor ``(N, *input_shape)``; a model a user brings (a Hugging Face
transformer, a two-input net) may take token ids, a tuple of tensors or a dict of named tensors, and
may return a tuple, a dict or a ``ModelOutput``. Everything that has to *run* a model without real
data (MAC counting, tracing channel dependencies, the compressed == masked check, latency, ONNX
export) asks an :class:`InputSpec` for example inputs and calls the model through :func:`call_model`;
everything that reads a prediction goes through :func:`logits_of`.

An :class:`InputSpec` is a structure (``tensor``, ``tuple`` or ``dict``) of :class:`TensorSpec`
leaves. A leaf is a float tensor (random normal values), token ids (int64 uniform in
``[0, vocab_size)``, Torch-Pruning's and Hugging Face's ``dummy_inputs`` convention) or a constant
tensor (an attention mask of ones). Shapes exclude the batch dimension. Example inputs are
deterministic: the same spec, batch size and seed give the same tensors. The spec is plain data
(:meth:`InputSpec.to_dict` / :meth:`InputSpec.from_dict`), stored in checkpoints and plans.

``input_shape`` (a tuple of ints, one float tensor) stays the shorthand everywhere:
:func:`as_input_spec` turns it into ``InputSpec.tensor(shape)``, and :attr:`InputSpec.shape` gives
it back for a single float tensor, so existing callers and checkpoints keep working.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError, check_choice

#: the structures an input can have
STRUCTURES = ("tensor", "tuple", "dict")
#: the dtypes a leaf can have (by name, so a spec is JSON)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}
#: the most elements one example leaf may have per sample (a typo such as a sequence of 10^9 tokens
#: is an error, not an out-of-memory kill)
MAX_SAMPLE_NUMEL = 1 << 28
#: the most dimensions one leaf may have (without the batch)
MAX_DIMS = 6


def _positive_shape(what: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise PrunelabError(f"{what} must be a list of positive sizes without the batch, got {shape!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape) \
            or not 1 <= len(shape) <= MAX_DIMS:
        raise PrunelabError(f"{what} must be 1 to {MAX_DIMS} positive sizes without the batch, got {list(shape)!r}")
    shape = tuple(int(d) for d in shape)
    if math.prod(shape) > MAX_SAMPLE_NUMEL:
        raise PrunelabError(f"{what} {'x'.join(map(str, shape))} has {math.prod(shape):,} elements per sample; "
                            f"the most is {MAX_SAMPLE_NUMEL:,}")
    return shape


@dataclass(frozen=True)
class TensorSpec:
    """One input tensor without its batch dimension.

    ``dtype``: one of :data:`DTYPES`. ``vocab_size``: for integer tensors, example values are drawn
    uniformly from ``[0, vocab_size)`` (token ids); ``fill``: every example value is this constant (an
    attention mask of ones). A float tensor with neither is random normal.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    vocab_size: int | None = None
    fill: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _positive_shape("input shape", self.shape))
        check_choice("input dtype", self.dtype, DTYPES)
        if self.vocab_size is not None:
            if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 1:
                raise PrunelabError(f"vocab_size must be a positive integer, got {self.vocab_size!r}")
            if self.is_float:
                raise PrunelabError(f"vocab_size applies to integer token ids, not to a {self.dtype} input")
        if self.fill is not None and (isinstance(self.fill, bool) or not isinstance(self.fill, int | float)):
            raise PrunelabError(f"input fill must be a number, got {self.fill!r}")
        if not self.is_float and self.dtype != "bool" and self.vocab_size is None and self.fill is None:
            raise PrunelabError(f"an integer input needs a vocab_size (token ids) or a fill value, got neither "
                                f"for shape {list(self.shape)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point

    @property
    def is_tokens(self) -> bool:
        return self.vocab_size is not None

    def example(self, batch: int, generator: torch.Generator, dtype: torch.dtype | None = None,
                zeros: bool = False) -> torch.Tensor:
        """A ``(batch, *shape)`` tensor; ``dtype`` overrides a float leaf's dtype (the model's);
        ``zeros`` gives zero floats (counting) while token ids and fills stay as specified."""
        size = (int(batch), *self.shape)
        if self.fill is not None:
            out_dtype = dtype if (dtype is not None and self.is_float) else self.torch_dtype
            return torch.full(size, self.fill, dtype=out_dtype)
        if self.vocab_size is not None:
            return torch.randint(0, self.vocab_size, size, generator=generator, dtype=torch.int64) \
                .to(self.torch_dtype)
        if self.dtype == "bool":
            return torch.ones(size, dtype=torch.bool)
        out_dtype = dtype if dtype is not None else self.torch_dtype
        if zeros:
            return torch.zeros(size, dtype=out_dtype)
        return torch.randn(size, generator=generator, dtype=torch.float32).to(out_dtype)

    def describe(self) -> str:
        dims = "x".join(map(str, self.shape))
        if self.vocab_size is not None:
            return f"{self.dtype}[{dims}] ids < {self.vocab_size}"
        if self.fill is not None:
            return f"{self.dtype}[{dims}] = {self.fill:g}"
        return dims if self.dtype == "float32" else f"{self.dtype}[{dims}]"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype}
        if self.vocab_size is not None:
            d["vocab_size"] = self.vocab_size
        if self.fill is not None:
            d["fill"] = self.fill
        return d

    @classmethod
    def from_dict(cls, d: Any) -> TensorSpec:
        if not isinstance(d, Mapping) or "shape" not in d:
            raise PrunelabError(f"an input tensor spec must be a mapping with a 'shape', got {d!r}"[:200])
        unknown = set(d) - {"shape", "dtype", "vocab_size", "fill"}
        if unknown:
            raise PrunelabError(f"unknown input tensor field(s) {sorted(unknown)}; valid: dtype, fill, shape, "
                                f"vocab_size")
        return cls(d["shape"], str(d.get("dtype", "float32")), d.get("vocab_size"), d.get("fill"))


@dataclass(frozen=True)
class InputSpec:
    """The example inputs of a model: one tensor, a tuple of tensors or a dict of named tensors.

    ``leaves`` holds ``(name, TensorSpec)`` pairs in calling order; names are ``"0", "1", ...`` for
    ``tensor`` and ``tuple`` structures and the keyword names for ``dict``. Build one with
    :meth:`tensor`, :meth:`tokens`, :meth:`tuple_of` or :meth:`dict_of`.
    """

    structure: str
    leaves: tuple[tuple[str, TensorSpec], ...]

    def __post_init__(self) -> None:
        check_choice("input structure", self.structure, STRUCTURES)
        leaves = tuple((str(n), t) for n, t in self.leaves)
        if not leaves or not all(isinstance(t, TensorSpec) for _, t in leaves):
            raise PrunelabError("an input spec needs at least one tensor")
        if self.structure == "tensor" and len(leaves) != 1:
            raise PrunelabError(f"a 'tensor' input has exactly one tensor, got {len(leaves)}")
        if len({n for n, _ in leaves}) != len(leaves):
            raise PrunelabError(f"input names must be distinct, got {[n for n, _ in leaves]}")
        object.__setattr__(self, "leaves", leaves)

    # ------------------------------------------------------------------------------ constructors
    @classmethod
    def tensor(cls, shape: Sequence[int], dtype: str = "float32") -> InputSpec:
        """One float tensor ``(N, *shape)``: what ``input_shape`` means."""
        return cls("tensor", (("0", TensorSpec(tuple(shape), dtype)),))

    @classmethod
    def tokens(cls, seq_len: int, vocab_size: int, *, attention_mask: bool = False,
               name: str = "input_ids") -> InputSpec:
        """Token ids ``(N, seq_len)`` int64 in ``[0, vocab_size)``. With ``attention_mask`` (or a
        ``name`` other than the positional default) the model is called with keywords:
        ``model(input_ids=..., attention_mask=ones)``; otherwise positionally, ``model(ids)``."""
        ids = TensorSpec((int(seq_len),), "int64", vocab_size=int(vocab_size))
        if not attention_mask:
            return cls("dict", ((name, ids),)) if name != "input_ids" else cls("tensor", (("0", ids),))
        return cls("dict", ((name, ids), ("attention_mask", TensorSpec((int(seq_len),), "int64", fill=1))))

    @classmethod
    def tuple_of(cls, *tensors: TensorSpec) -> InputSpec:
        """Positional inputs: ``model(t0, t1, ...)``."""
        return cls("tuple", tuple((str(i), t) for i, t in enumerate(tensors)))

    @classmethod
    def dict_of(cls, tensors: Mapping[str, TensorSpec]) -> InputSpec:
        """Keyword inputs: ``model(**{name: tensor})``."""
        return cls("dict", tuple(tensors.items()))

    # ---------------------------------------------------------------------------------- queries
    @property
    def is_plain(self) -> bool:
        """One float tensor: the spec ``input_shape`` stands for."""
        return self.structure == "tensor" and self.leaves[0][1].is_float and self.leaves[0][1].fill is None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the first tensor (for one float tensor: the classic ``input_shape``)."""
        return self.leaves[0][1].shape

    @property
    def main(self) -> TensorSpec:
        """The leaf that carries the data: the token ids if there are any, else the first tensor."""
        for _, t in self.leaves:
            if t.is_tokens:
                return t
        return self.leaves[0][1]

    @property
    def seq_len(self) -> int | None:
        """The sequence length of the token ids, or None without token ids."""
        main = self.main
        return main.shape[-1] if main.is_tokens else None

    @property
    def vocab_size(self) -> int | None:
        return self.main.vocab_size

    def describe(self) -> str:
        """``3x32x32``; ``int64[128] ids < 50257``; ``input_ids: ..., attention_mask: ...``."""
        if self.structure == "tensor":
            return self.leaves[0][1].describe()
        if self.structure == "tuple":
            return "(" + ", ".join(t.describe() for _, t in self.leaves) + ")"
        return ", ".join(f"{n}: {t.describe()}" for n, t in self.leaves)

    def with_seq_len(self, seq_len: int) -> InputSpec:
        """Every leaf whose last dimension is the token sequence gets ``seq_len``."""
        old = self.seq_len
        if old is None:
            raise PrunelabError(f"input {self.describe()} has no token sequence whose length could be set")
        leaves = tuple((n, TensorSpec((*t.shape[:-1], int(seq_len)), t.dtype, t.vocab_size, t.fill)
                        if t.shape[-1] == old else t) for n, t in self.leaves)
        return InputSpec(self.structure, leaves)

    # --------------------------------------------------------------------------------- examples
    def example(self, batch: int = 1, *, seed: int = 0, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None, zeros: bool = False):
        """Example inputs of ``batch`` samples: a tensor, a tuple or a dict (as :attr:`structure`).

        Deterministic by ``seed``. ``dtype`` sets the floating leaves' dtype (pass the model's, see
        :func:`float_dtype_of`); ``zeros`` makes float leaves zero (token ids stay random)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise PrunelabError(f"batch size must be a positive integer, got {batch!r}")
        gen = torch.Generator().manual_seed(int(seed))
        tensors = [(n, t.example(batch, gen, dtype, zeros)) for n, t in self.leaves]
        if device is not None:
            tensors = [(n, x.to(device)) for n, x in tensors]
        if self.structure == "tensor":
            return tensors[0][1]
        if self.structure == "tuple":
            return tuple(x for _, x in tensors)
        return dict(tensors)

    def example_for(self, model: nn.Module, batch: int = 1, *, seed: int = 0, zeros: bool = False):
        """:meth:`example` on the model's device with its floating dtype."""
        return self.example(batch, seed=seed, device=device_of(model), dtype=float_dtype_of(model), zeros=zeros)

    # ------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"structure": self.structure,
                "tensors": [{"name": n, **t.to_dict()} for n, t in self.leaves]}

    @classmethod
    def from_dict(cls, d: Any) -> InputSpec:
        if not isinstance(d, Mapping) or not isinstance(d.get("tensors"), list):
            raise PrunelabError("an input spec must be a mapping with 'structure' and a list of 'tensors'")
        leaves = []
        for i, item in enumerate(d["tensors"]):
            if not isinstance(item, Mapping):
                raise PrunelabError(f"input tensor {i} must be a mapping, got {type(item).__name__}")
            rest = {k: v for k, v in item.items() if k != "name"}
            leaves.append((str(item.get("name", i)), TensorSpec.from_dict(rest)))
        return cls(str(d.get("structure", "tensor")), tuple(leaves))


def as_input_spec(inputs: InputSpec | Sequence[int] | Mapping[str, Any]) -> InputSpec:
    """An :class:`InputSpec` from itself, its dict form, or an ``input_shape`` shorthand (one float
    tensor of that shape, without the batch)."""
    if isinstance(inputs, InputSpec):
        return inputs
    if isinstance(inputs, Mapping):
        return InputSpec.from_dict(inputs)
    if isinstance(inputs, torch.Size):
        inputs = tuple(inputs)
    try:
        shape = tuple(int(d) for d in inputs)
    except (TypeError, ValueError):
        raise PrunelabError(f"input shape must be a sequence of positive integers, got {inputs!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise PrunelabError(f"input shape must be positive integers without the batch, got {inputs!r}")
    return InputSpec.tensor(shape)


def input_spec_of_data(data) -> InputSpec:
    """The inputs of a data set (a :class:`~prunelab.data.DataBundle`, read by its attributes): token
    ids ``(T,)`` below ``info["vocab_size"]`` for a ``tokens`` set, else one float tensor of its
    ``input_shape``."""
    info = getattr(data, "info", None) or {}
    if getattr(data, "task", None) == "tokens" and info.get("vocab_size"):
        return InputSpec.tokens(int(data.input_shape[-1]), int(info["vocab_size"]))
    return InputSpec.tensor(tuple(data.input_shape))


def default_loss_of_data(data) -> str:
    """``next-token`` for a data set whose labels are its token ids, else ``cross-entropy``."""
    info = getattr(data, "info", None) or {}
    return "next-token" if info.get("labels") == "next-token" else "cross-entropy"


def spec_or_shape_of(meta: Mapping[str, Any] | None) -> InputSpec | None:
    """The input spec recorded in checkpoint / plan metadata: ``inputs`` (an :class:`InputSpec`
    dict) wins over the older ``input_shape``; None when neither is there."""
    meta = meta or {}
    if meta.get("inputs") is not None:
        return InputSpec.from_dict(meta["inputs"])
    if meta.get("input_shape"):
        return as_input_spec(meta["input_shape"])
    return None


def input_meta(spec: InputSpec | Sequence[int]) -> dict[str, Any]:
    """What a checkpoint's metadata records about its inputs: ``input_shape`` (the first tensor's
    shape, what older readers use) plus ``inputs`` when the spec is more than one float tensor."""
    spec = as_input_spec(spec)
    meta: dict[str, Any] = {"input_shape": list(spec.shape)}
    if not spec.is_plain:
        meta["inputs"] = spec.to_dict()
    return meta


# ------------------------------------------------------------------------------------ calling
def call_model(model, inputs):
    """``model(x)`` for a tensor, ``model(*inputs)`` for a tuple, ``model(**inputs)`` for a dict
    (Torch-Pruning's ``example_inputs`` convention)."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def batch_size_of(inputs) -> int:
    """The batch dimension of example inputs (the first tensor's first dimension)."""
    first = first_tensor(inputs)
    return int(first.shape[0]) if first.dim() else 1


def first_tensor(inputs) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return inputs
    values = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise PrunelabError("the model's inputs hold no tensor")


def move_inputs(inputs, device: torch.device | str):
    """Inputs (tensor, tuple or dict) on ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    return tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in inputs)


def device_of(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def float_dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype float inputs should have: the model's first floating parameter or buffer's."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


# ------------------------------------------------------------------------------------ outputs
def logits_of(output: Any) -> torch.Tensor:
    """The prediction tensor of a model's output.

    A tensor is itself; a tuple or list gives its first element (Hugging Face's ``return_dict=False``
    form puts the logits first); a dict or an HF ``ModelOutput`` (an ordered dict) gives ``logits``
    (or, failing that, its first tensor value). Anything else is one :class:`PrunelabError` line."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
        raise PrunelabError(f"the model returned a mapping without tensors (keys: {list(output)[:6]})")
    if isinstance(output, tuple | list) and output:
        return logits_of(output[0])
    raise PrunelabError(f"cannot read logits from a model output of type {type(output).__name__}; "
                        f"expected a tensor, a tuple / list (logits first), or a dict / ModelOutput with 'logits'")


def run_logits(model, inputs) -> torch.Tensor:
    """``logits_of(call_model(model, inputs))``."""
    return logits_of(call_model(model, inputs))


class LogitsModule(nn.Module):
    """Wraps a model so it takes the spec's inputs positionally and returns only the logits tensor
    (what ONNX export, latency backends and Torch-Pruning's output walk want). The keyword names
    of a dict spec are fixed at construction; ``inner`` is the wrapped model."""

    def __init__(self, inner: nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.inner = inner
        self.structure = spec.structure
        self.names = [n for n, _ in spec.leaves]

    def forward(self, *args):
        if self.structure == "dict":
            return logits_of(self.inner(**dict(zip(self.names, args))))
        return logits_of(self.inner(*args))


def positional(inputs) -> tuple:
    """Example inputs as a positional tuple (for :class:`LogitsModule` and ONNX)."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, Mapping):
        return tuple(inputs.values())
    return tuple(inputs)
