"""Direct sparse convolution: a native CPU kernel that multiplies only a convolution's non-zero weights.

Lowering a sparse convolution to a sparse matmul (:class:`prunelab.export.sparse.SparseConv2d`'s
``gather`` / ``im2col`` lowerings) pays for building the im2col matrix, and general sparse BLAS
multiplies at a fraction of the rate oneDNN convolves, so on CPU it rarely beats the dense kernel
by much. A direct sparse convolution (Park et al., "Faster CNNs with Direct Sparse Convolutions and
Guided Pruning", ICLR 2017) never builds im2col: for an output channel ``o`` and every non-zero
``w[o, c, i, j]`` it adds ``w`` times the input plane ``c`` shifted by ``(i, j)``. On the zero-padded
input, flattened per plane, that shift is a constant offset ``i * dilation_h * Wp + j * dilation_w``,
so each non-zero is one long contiguous multiply-add (vectorised by the compiler) over the padded
output grid, which stays in cache; the valid columns are then copied out. Work is exactly
``nnz * output positions``; output channels and images run in parallel on torch's intra-op threads.

The kernel is C++ compiled on first use (:mod:`prunelab.export.native`: cached under torch's
extensions folder, ``TORCH_EXTENSIONS_DIR``). Where no compiler is available, or with
``PRUNELAB_NATIVE=0``, :func:`native_kernel` returns ``None`` and the matmul lowerings are used:
the kernel is an accelerator, never a requirement. Stride 1 only (any padding, dilation, groups).
"""

from __future__ import annotations

from types import ModuleType

import torch

from prunelab.export.native import NativeLibrary, native_disabled

__all__ = ["direct_conv2d", "native_disabled", "native_kernel", "native_unavailable_reason"]

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstring>
#include <vector>

// xpad: (B, C, Hp, Wp) float32, zero-padded, contiguous. rowptr: (Cout + 1) int64 CSR row pointers
// over output channels; chan / offs / vals: per non-zero, its input channel, its flat offset
// (i * dh * Wp + j * dw) in a padded plane, and its value. Output: (B, Cout, H, W), stride 1.
torch::Tensor direct_conv2d(const torch::Tensor& xpad, const torch::Tensor& rowptr, const torch::Tensor& chan,
                            const torch::Tensor& offs, const torch::Tensor& vals,
                            const c10::optional<torch::Tensor>& bias, int64_t H, int64_t W) {
  TORCH_CHECK(xpad.dim() == 4 && xpad.is_contiguous() && xpad.scalar_type() == torch::kFloat32,
              "direct_conv2d: padded input must be a contiguous float32 (B, C, Hp, Wp) tensor");
  const int64_t B = xpad.size(0), C = xpad.size(1), Hp = xpad.size(2), Wp = xpad.size(3);
  const int64_t Cout = rowptr.size(0) - 1;
  TORCH_CHECK(H >= 1 && W >= 1 && H <= Hp && W <= Wp, "direct_conv2d: bad output size");
  auto out = torch::empty({B, Cout, H, W}, xpad.options());
  const int64_t L = (H - 1) * Wp + W;  // padded-grid positions that cover every valid output
  const int64_t plane = Hp * Wp;
  const float* x = xpad.data_ptr<float>();
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  const int64_t* ch = chan.data_ptr<int64_t>();
  const int64_t* of = offs.data_ptr<int64_t>();
  const float* v = vals.data_ptr<float>();
  const float* bs = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  const int64_t nnz = rp[Cout];
  const int64_t work_per_item = std::max<int64_t>(1, L * (1 + nnz / std::max<int64_t>(1, Cout)));
  const int64_t grain = std::max<int64_t>(1, 32768 / work_per_item);
  at::parallel_for(0, B * Cout, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(L);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / Cout, oc = item % Cout;
      float* __restrict__ d = buf.data();
      const float init = bs ? bs[oc] : 0.f;
      for (int64_t i = 0; i < L; ++i) d[i] = init;
      const float* xb = x + b * C * plane;
      int64_t k = rp[oc];
      const int64_t k_end = rp[oc + 1];
      // Four non-zeros per pass: one load and one store of the accumulator per four multiply-adds.
      for (; k + 3 < k_end; k += 4) {
        const float* __restrict__ s0 = xb + ch[k] * plane + of[k];
        const float* __restrict__ s1 = xb + ch[k + 1] * plane + of[k + 1];
        const float* __restrict__ s2 = xb + ch[k + 2] * plane + of[k + 2];
        const float* __restrict__ s3 = xb + ch[k + 3] * plane + of[k + 3];
        const float w0 = v[k], w1 = v[k + 1], w2 = v[k + 2], w3 = v[k + 3];
        for (int64_t i = 0; i < L; ++i) d[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i];
      }
      for (; k < k_end; ++k) {
        const float* __restrict__ s = xb + ch[k] * plane + of[k];
        const float w = v[k];
        for (int64_t i = 0; i < L; ++i) d[i] += w * s[i];
      }
      float* dst = o + item * H * W;
      for (int64_t y = 0; y < H; ++y) std::memcpy(dst + y * W, d + y * Wp, W * sizeof(float));
    }
  });
  return out;
}
"""

_LIBRARY = NativeLibrary("prunelab_direct_conv", _SOURCE, functions=["direct_conv2d"])


def native_kernel() -> ModuleType | None:
    """The compiled kernel module (built once per process, cached on disk), or ``None`` where it
    cannot be built here; :func:`native_unavailable_reason` then says why."""
    return _LIBRARY.module()


def native_unavailable_reason() -> str | None:
    """Why :func:`native_kernel` returns ``None``, or ``None`` when it is available."""
    return _LIBRARY.unavailable_reason()


def direct_conv2d(padded: torch.Tensor, rowptr: torch.Tensor, channels: torch.Tensor, offsets: torch.Tensor,
                  values: torch.Tensor, bias: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """Stride-1 convolution of a zero-padded ``(B, C, Hp, Wp)`` float32 input by CSR weights over
    output channels (see the module doc); returns ``(B, Cout, height, width)``."""
    kernel = native_kernel()
    if kernel is None:
        raise RuntimeError(native_unavailable_reason())
    return kernel.direct_conv2d(padded, rowptr, channels, offsets, values, bias, int(height), int(width))
