"""C++ source of the deploy executor (:mod:`prunelab.export.executor`), kept apart from the Python.

The executor runs a folded graph (:mod:`prunelab.export.graph`) as one native call: a list of
operations over numbered value slots, interpreted in C++, so no Python runs between layers. Sparse
convolutions and sparse linear layers use the kernels below; dense ones go through ATen (oneDNN
convolutions, BLAS matmuls); pooling, concatenation and flattening are ATen calls too.

Sparse convolution (Park et al., "Faster CNNs with Direct Sparse Convolutions and Guided Pruning",
ICLR 2017): each image is first copied into a zero-padded scratch; a stride ``s`` is turned into
stride 1 by splitting the padded image into ``s x s`` phase planes (space-to-depth), so every
non-zero weight ``w[o, c, i, j]`` reads one phase plane at a constant flat offset. Output positions
are tiled into ``T`` floats held in registers while all the non-zeros of an output channel are
accumulated into them (one broadcast, ``T / 16`` loads and FMAs per non-zero on AVX-512), then the
bias, an optional residual input and ReLU / ReLU6 are applied while the valid columns are written
out. Work is ``nnz x output positions`` with no im2col matrix. A pre-activation BatchNorm (+ ReLU) that
only sparse convolutions read is applied while they copy their input into the scratch (the zero
padding stays zero: it pads the BatchNorm's output), so it costs no pass of its own.

Sparse linear layers (CSR over output features): the batch is transposed to ``(in, N)`` so that
each non-zero multiplies a contiguous row of ``N`` inputs, tiled by 16 into registers; batch 1 is a
plain sparse matrix-vector product.
"""

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

namespace {

enum Kind : int64_t {
  CONV_SPARSE = 0, CONV_DENSE = 1, LINEAR_SPARSE = 2, LINEAR_DENSE = 3, AFFINE = 4, ADD = 5, ACT = 6,
  MAXPOOL = 7, AVGPOOL = 8, GLOBAL_AVGPOOL = 9, FLATTEN = 10, CAT = 11, ALIAS = 12
};
enum Act : int64_t { ACT_NONE = 0, ACT_RELU = 1, ACT_RELU6 = 2 };

inline float activate(float v, int64_t act) {
  if (act == ACT_RELU) return v > 0.f ? v : 0.f;
  if (act == ACT_RELU6) return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
  return v;
}

void activate_(torch::Tensor& t, int64_t act) {
  if (act == ACT_RELU) t.relu_();
  else if (act == ACT_RELU6) t.clamp_(0.0, 6.0);
}

// Buffers kept from one run to the next, per op (memory planning, as graph runtimes do): a fresh
// allocation of a large tensor costs page faults on every call (measured: WRN-40-2 at batch 32 spent
// about a third of its time there). A buffer is reused only while nothing else holds its storage,
// so a result the caller kept (or a view of it) is never overwritten.
struct Pool {
  std::vector<std::vector<torch::Tensor>>* bufs = nullptr;  // null: no pooling (op timing, concurrent runs)
  int64_t op = 0;

  torch::Tensor get(size_t k, at::IntArrayRef sizes, const at::TensorOptions& options, bool zero = false) const {
    if (bufs == nullptr) return zero ? torch::zeros(sizes, options) : torch::empty(sizes, options);
    auto& list = (*bufs)[op];
    if (list.size() <= k) list.resize(k + 1);
    auto& t = list[k];
    // held elsewhere: another handle on this tensor (use_count) or a view of its storage
    const bool held = t.defined() && (t.use_count() != 1 || t.storage().use_count() != 1);
    if (!t.defined() || held || t.sizes() != sizes || t.options().dtype() != options.dtype()) {
      t = zero ? torch::zeros(sizes, options) : torch::empty(sizes, options);
    }
    return t;
  }
};

// GCC / Clang vector extensions: 16 floats, lowered to AVX-512, AVX2 or SSE as the build allows.
typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));  // unaligned loads and stores

// One output channel's tile of 16 * NV padded-grid positions starting at p0, held in registers:
// acc = init + sum_k v[k] * plane_k[p0 + off_k].
template <int NV>
inline void conv_tile(const float* __restrict__ scratch, int64_t plane, const int64_t* __restrict__ src,
                      const int64_t* __restrict__ off, const float* __restrict__ val, int64_t k0, int64_t k1,
                      int64_t p0, float init, float* __restrict__ out) {
  vf acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = vf{} + init;
  for (int64_t k = k0; k < k1; ++k) {
    const float* s = scratch + src[k] * plane + off[k] + p0;
    const vf w = vf{} + val[k];
    for (int i = 0; i < NV; ++i) acc[i] += w * *(const vfu*)(s + 16 * i);
  }
  for (int i = 0; i < NV; ++i) *(vfu*)(out + 16 * i) = acc[i];
}

template <int NV>
void conv_channel(const float* scratch, int64_t plane, const int64_t* src, const int64_t* off, const float* val,
                  int64_t k0, int64_t k1, int64_t L, float init, float* tmp) {
  for (int64_t p0 = 0; p0 < L; p0 += 16 * NV) conv_tile<NV>(scratch, plane, src, off, val, k0, k1, p0, init, tmp + p0);
}

// Write the valid columns of a padded-grid result, adding the residual and applying the activation
// (a template per case, so the loops vectorise).
template <int64_t ACT, bool RES>
inline void epilogue(const float* __restrict__ t, const float* __restrict__ res, float* __restrict__ dst,
                     int64_t Ho, int64_t Wo, int64_t Wq) {
  for (int64_t y = 0; y < Ho; ++y) {
    const float* __restrict__ row = t + y * Wq;
    float* __restrict__ d = dst + y * Wo;
    const float* __restrict__ r = RES ? res + y * Wo : nullptr;
    for (int64_t xx = 0; xx < Wo; ++xx) {
      float v = RES ? row[xx] + r[xx] : row[xx];
      if (ACT == ACT_RELU) v = v > 0.f ? v : 0.f;
      if (ACT == ACT_RELU6) v = v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
      d[xx] = v;
    }
  }
}

struct SparseConv {
  // attrs: C, H, W, pad_h, pad_w, stride_h, stride_w, Hq, Wq, Ho, Wo, Cout, act, tile, input act (-1: none)
  int64_t C, H, W, ph, pw, sh, sw, Hq, Wq, Ho, Wo, Cout, act, tile, in_act;
  // in_scale / in_shift: a per-channel affine (a pre-activation BatchNorm) and in_act applied to the input
  // while it is copied into the scratch; the zero padding stays zero, as it pads the affine's output
  torch::Tensor rowptr, src, off, val, bias, in_scale, in_shift;
};

// n values of input channel ch into dst, through the input affine and activation when there is one.
inline void copy_in(const SparseConv& c, const float* __restrict__ from, float* __restrict__ dst, int64_t n,
                    int64_t step, int64_t ch) {
  if (c.in_act < 0) {
    if (step == 1) { std::memcpy(dst, from, n * sizeof(float)); return; }
    for (int64_t i = 0; i < n; ++i) dst[i] = from[i * step];
    return;
  }
  const float sc = c.in_scale.data_ptr<float>()[ch], sh = c.in_shift.data_ptr<float>()[ch];
  if (step == 1 && c.in_act == ACT_RELU) {  // the common case (pre-activation BN + ReLU), vectorised
    for (int64_t i = 0; i < n; ++i) { const float v = from[i] * sc + sh; dst[i] = v > 0.f ? v : 0.f; }
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = activate(from[i * step] * sc + sh, c.in_act);
}

// Copy image b of x (C, H, W) into sh*sw phase planes per channel of the zero-padded image.
void fill_scratch(const SparseConv& c, const float* x, float* scratch) {
  const int64_t plane = c.Hq * c.Wq;
  for (int64_t ch = 0; ch < c.C; ++ch) {
    const float* xc = x + ch * c.H * c.W;
    for (int64_t a = 0; a < c.sh; ++a) {
      for (int64_t b = 0; b < c.sw; ++b) {
        float* dst = scratch + ((a * c.sw + b) * c.C + ch) * plane;
        for (int64_t qy = 0; qy < c.Hq; ++qy) {
          const int64_t y = qy * c.sh + a - c.ph;
          float* row = dst + qy * c.Wq;
          if (y < 0 || y >= c.H) { std::memset(row, 0, c.Wq * sizeof(float)); continue; }
          const float* xr = xc + y * c.W;
          // columns qx with 0 <= qx * sw + b - pw < W are the image; the rest is zero padding
          const int64_t lo = std::min<int64_t>(c.Wq, std::max<int64_t>(0, (c.pw - b + c.sw - 1) / c.sw));
          const int64_t hi = std::max<int64_t>(lo, std::min<int64_t>(c.Wq, (c.W + c.pw - b + c.sw - 1) / c.sw));
          if (lo > 0) std::memset(row, 0, lo * sizeof(float));
          if (hi > lo) copy_in(c, xr + (lo * c.sw + b - c.pw), row + lo, hi - lo, c.sw, ch);
          if (hi < c.Wq) std::memset(row + hi, 0, (c.Wq - hi) * sizeof(float));
        }
      }
    }
  }
}

torch::Tensor run_sparse_conv(const SparseConv& c, const torch::Tensor& input, const torch::Tensor* residual,
                              const Pool& pool) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == c.C && input.size(2) == c.H && input.size(3) == c.W,
              "deploy executor: convolution input has shape ", input.sizes(), ", expected (N, ", c.C, ", ", c.H,
              ", ", c.W, ")");
  auto x = input.contiguous();
  const int64_t B = x.size(0);
  auto out = pool.get(0, {B, c.Cout, c.Ho, c.Wo}, x.options());
  torch::Tensor res_c;
  if (residual) {
    TORCH_CHECK(residual->sizes() == out.sizes() && residual->scalar_type() == torch::kFloat32,
                "deploy executor: residual input has shape ", residual->sizes(), ", expected ", out.sizes());
    res_c = residual->contiguous();
  }
  const int64_t plane = c.Hq * c.Wq;
  const int64_t L = (c.Ho - 1) * c.Wq + c.Wo;
  const int64_t Lt = (L + c.tile - 1) / c.tile * c.tile;
  // slack: a tile may read up to `tile` floats past the last valid position of the last plane
  const int64_t scratch_size = c.sh * c.sw * c.C * plane + Lt + plane;
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float* rp = residual ? res_c.data_ptr<float>() : nullptr;
  const int64_t* rowptr = c.rowptr.data_ptr<int64_t>();
  const int64_t* src = c.src.data_ptr<int64_t>();
  const int64_t* off = c.off.data_ptr<int64_t>();
  const float* val = c.val.data_ptr<float>();
  const float* bias = c.bias.defined() ? c.bias.data_ptr<float>() : nullptr;
  const int64_t tile = c.tile;
  // Parallel over images, then over output channels within an image (each thread fills its scratch).
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(c.Cout, at::get_num_threads()));
  const int64_t per_thread = scratch_size + Lt;  // scratch, then the tile buffer
  // zeroed when first allocated: the slack past the last plane is read (into discarded positions) only
  auto work = pool.get(1, {at::get_num_threads(), per_thread}, x.options(), /*zero=*/true);
  float* work_base = work.data_ptr<float>();
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    float* scratch_p = work_base + at::get_thread_num() * per_thread;
    float* tmp_p = scratch_p + scratch_size;
    int64_t filled = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, part = item % chunks;
      if (filled != b) { fill_scratch(c, xp + b * c.C * c.H * c.W, scratch_p); filled = b; }
      const int64_t oc0 = part * c.Cout / chunks, oc1 = (part + 1) * c.Cout / chunks;
      for (int64_t oc = oc0; oc < oc1; ++oc) {
        const float init = bias ? bias[oc] : 0.f;
        const int64_t k0 = rowptr[oc], k1 = rowptr[oc + 1];
        float* t = tmp_p;
        switch (tile) {
          case 16: conv_channel<1>(scratch_p, plane, src, off, val, k0, k1, L, init, t); break;
          case 32: conv_channel<2>(scratch_p, plane, src, off, val, k0, k1, L, init, t); break;
          case 64: conv_channel<4>(scratch_p, plane, src, off, val, k0, k1, L, init, t); break;
          default: conv_channel<8>(scratch_p, plane, src, off, val, k0, k1, L, init, t); break;
        }
        float* dst = op + (b * c.Cout + oc) * c.Ho * c.Wo;
        const float* res = rp ? rp + (b * c.Cout + oc) * c.Ho * c.Wo : nullptr;
        switch (c.act * 2 + (res != nullptr)) {
          case 0: epilogue<ACT_NONE, false>(t, res, dst, c.Ho, c.Wo, c.Wq); break;
          case 1: epilogue<ACT_NONE, true>(t, res, dst, c.Ho, c.Wo, c.Wq); break;
          case 2: epilogue<ACT_RELU, false>(t, res, dst, c.Ho, c.Wo, c.Wq); break;
          case 3: epilogue<ACT_RELU, true>(t, res, dst, c.Ho, c.Wo, c.Wq); break;
          case 4: epilogue<ACT_RELU6, false>(t, res, dst, c.Ho, c.Wo, c.Wq); break;
          default: epilogue<ACT_RELU6, true>(t, res, dst, c.Ho, c.Wo, c.Wq); break;
        }
      }
    }
  });
  return out;
}

struct SparseLinear {
  int64_t in, out, act;
  torch::Tensor rowptr, col, val, bias;
};

torch::Tensor run_sparse_linear(const SparseLinear& l, const torch::Tensor& input, const Pool& pool) {
  TORCH_CHECK(input.dim() == 2 && input.size(1) == l.in, "deploy executor: linear input has shape ",
              input.sizes(), ", expected (N, ", l.in, ")");
  const int64_t N = input.size(0);
  const int64_t* rowptr = l.rowptr.data_ptr<int64_t>();
  const int32_t* col = l.col.data_ptr<int32_t>();  // 32-bit: less memory traffic per non-zero
  const float* val = l.val.data_ptr<float>();
  const float* bias = l.bias.defined() ? l.bias.data_ptr<float>() : nullptr;
  if (N == 1) {
    auto x = input.contiguous();
    auto y = pool.get(0, {1, l.out}, x.options());
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, l.out, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        // four independent sums: the gathers of x overlap instead of waiting on one another
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        int64_t k = rowptr[r];
        const int64_t k1 = rowptr[r + 1];
        for (; k + 3 < k1; k += 4) {
          s0 += val[k] * xp[col[k]];
          s1 += val[k + 1] * xp[col[k + 1]];
          s2 += val[k + 2] * xp[col[k + 2]];
          s3 += val[k + 3] * xp[col[k + 3]];
        }
        for (; k < k1; ++k) s0 += val[k] * xp[col[k]];
        yp[r] = activate((s0 + s1) + (s2 + s3) + (bias ? bias[r] : 0.f), l.act);
      }
    });
    return y;
  }
  constexpr int64_t T = 32;  // two vectors of 16 batch columns per pass
  const int64_t Np = (N + T - 1) / T * T;
  auto xt = pool.get(1, {l.in, Np}, input.options(), /*zero=*/true);  // padding columns stay zero
  xt.narrow(1, 0, N).copy_(input.t());
  auto yt = pool.get(2, {l.out, Np}, input.options());
  const float* xp = xt.data_ptr<float>();
  float* yp = yt.data_ptr<float>();
  at::parallel_for(0, l.out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float init = bias ? bias[r] : 0.f;
      for (int64_t n0 = 0; n0 < Np; n0 += T) {
        vf a0 = vf{} + init, a1 = vf{} + init;
        for (int64_t k = rowptr[r]; k < rowptr[r + 1]; ++k) {
          const vf w = vf{} + val[k];
          const float* s = xp + col[k] * Np + n0;
          a0 += w * *(const vfu*)s;
          a1 += w * *(const vfu*)(s + 16);
        }
        float* d = yp + r * Np + n0;
        *(vfu*)d = a0;
        *(vfu*)(d + 16) = a1;
        for (int t = 0; t < T; ++t) d[t] = activate(d[t], l.act);
      }
    }
  });
  auto out = pool.get(0, {N, l.out}, input.options());
  out.copy_(yt.narrow(1, 0, N).t());
  return out;
}

struct Op {
  int64_t kind;
  std::vector<int64_t> ins;
  int64_t out;
  std::vector<int64_t> attrs;
  std::vector<double> fattrs;
  std::vector<torch::Tensor> tensors;
  SparseConv conv;
  SparseLinear linear;
};

class Program {
 public:
  explicit Program(int64_t slots) : slots_(slots) {}

  void add(int64_t kind, std::vector<int64_t> ins, int64_t out, std::vector<int64_t> attrs,
           std::vector<double> fattrs, std::vector<torch::Tensor> tensors) {
    TORCH_CHECK(out >= 0 && out < slots_, "deploy executor: output slot out of range");
    for (auto i : ins) TORCH_CHECK(i >= 0 && i < slots_, "deploy executor: input slot out of range");
    Op op{kind, std::move(ins), out, std::move(attrs), std::move(fattrs), std::move(tensors), {}, {}};
    if (kind == CONV_SPARSE) {
      TORCH_CHECK(op.attrs.size() == 15 && op.tensors.size() == 7, "deploy executor: bad sparse convolution");
      auto& a = op.attrs;
      auto& t = op.tensors;
      op.conv = SparseConv{a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13],
                           a[14], t[0].contiguous(), t[1].contiguous(), t[2].contiguous(), t[3].contiguous(), t[4],
                           t[5].contiguous(), t[6].contiguous()};
      TORCH_CHECK(op.conv.rowptr.numel() == op.conv.Cout + 1, "deploy executor: bad row pointers");
      const auto& cv = op.conv;
      TORCH_CHECK(cv.in_act < 0 || (cv.in_scale.numel() == cv.C && cv.in_shift.numel() == cv.C),
                  "deploy executor: bad input affine");
    } else if (kind == LINEAR_SPARSE) {
      TORCH_CHECK(op.attrs.size() == 3 && op.tensors.size() == 4 && op.tensors[1].scalar_type() == torch::kInt32,
                  "deploy executor: bad sparse linear layer");
      op.linear = SparseLinear{op.attrs[0], op.attrs[1], op.attrs[2], op.tensors[0].contiguous(),
                               op.tensors[1].contiguous(), op.tensors[2].contiguous(), op.tensors[3]};
    }
    ops_.push_back(std::move(op));
  }

  torch::Tensor run(const torch::Tensor& x) const {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.device().is_cpu(),
                "deploy executor: input must be a float32 CPU tensor");
    c10::InferenceMode guard;
    // One run at a time uses the buffer pool; a concurrent run (another Python thread) allocates afresh.
    std::unique_lock<std::mutex> lock(pool_mutex_, std::try_to_lock);
    if (lock.owns_lock() && buffers_.size() != ops_.size()) buffers_.resize(ops_.size());
    std::vector<torch::Tensor> v(slots_);
    v[0] = x.contiguous();
    for (size_t i = 0; i < ops_.size(); ++i) {
      Pool pool;
      if (lock.owns_lock()) pool = Pool{&buffers_, static_cast<int64_t>(i)};
      v[ops_[i].out] = step(ops_[i], v, pool);
    }
    return v[ops_.empty() ? 0 : ops_.back().out];
  }

  // Run the program up to (not including) op `index` and return the inputs of that op.
  std::vector<torch::Tensor> inputs_of(const torch::Tensor& x, int64_t index) const {
    c10::InferenceMode guard;
    std::vector<torch::Tensor> v(slots_);
    v[0] = x.contiguous();
    for (int64_t i = 0; i < index; ++i) v[ops_[i].out] = step(ops_[i], v, Pool{});
    std::vector<torch::Tensor> out;
    for (auto i : ops_[index].ins) out.push_back(v[i]);
    return out;
  }

  // Run op `index` alone on the given inputs (for timing one layer).
  torch::Tensor run_op(int64_t index, const std::vector<torch::Tensor>& inputs) const {
    c10::InferenceMode guard;
    const auto& op = ops_[index];
    std::vector<torch::Tensor> v(slots_);
    for (size_t i = 0; i < op.ins.size(); ++i) v[op.ins[i]] = inputs[i];
    return step(op, v, Pool{});
  }

  int64_t size() const { return static_cast<int64_t>(ops_.size()); }

 private:
  static torch::Tensor step(const Op& op, const std::vector<torch::Tensor>& v, const Pool& pool) {
    const auto& a = op.attrs;
    switch (op.kind) {
      case CONV_SPARSE:
        return run_sparse_conv(op.conv, v[op.ins[0]], op.ins.size() > 1 ? &v[op.ins[1]] : nullptr, pool);
      case CONV_DENSE: {
        // attrs: stride h, w, pad h, w, dilation h, w, groups, act; tensors: weight, bias
        auto y = at::conv2d(v[op.ins[0]], op.tensors[0], op.tensors[1], {a[0], a[1]}, {a[2], a[3]}, {a[4], a[5]},
                            a[6]);
        if (op.ins.size() > 1) y.add_(v[op.ins[1]]);
        activate_(y, a[7]);
        return y;
      }
      case LINEAR_SPARSE:
        return run_sparse_linear(op.linear, v[op.ins[0]], pool);
      case LINEAR_DENSE: {
        auto y = at::linear(v[op.ins[0]], op.tensors[0], op.tensors[1]);
        activate_(y, a[0]);
        return y;
      }
      case AFFINE: {  // per-channel scale and shift (a BatchNorm not folded into a convolution), then act
        const auto& x = v[op.ins[0]];
        std::vector<int64_t> shape(x.dim(), 1);
        shape[1] = x.size(1);
        auto y = pool.get(0, x.sizes(), x.options());
        at::addcmul_out(y, op.tensors[1].view(shape), x, op.tensors[0].view(shape));
        activate_(y, a[0]);
        return y;
      }
      case ADD: {
        const auto& x = v[op.ins[0]];
        auto y = x.sizes() == v[op.ins[1]].sizes() ? pool.get(0, x.sizes(), x.options()) : torch::Tensor();
        if (y.defined()) at::add_out(y, x, v[op.ins[1]]);
        else y = at::add(x, v[op.ins[1]]);
        activate_(y, a[0]);
        return y;
      }
      case ACT: {
        const auto& x = v[op.ins[0]];
        auto y = pool.get(0, x.sizes(), x.options());
        y.copy_(x);
        activate_(y, a[0]);
        return y;
      }
      case MAXPOOL:  // kernel h, w, stride h, w, pad h, w, dilation h, w, ceil
        return at::max_pool2d(v[op.ins[0]], {a[0], a[1]}, {a[2], a[3]}, {a[4], a[5]}, {a[6], a[7]}, a[8] != 0);
      case AVGPOOL:  // kernel h, w, stride h, w, pad h, w, ceil, count_include_pad
        return at::avg_pool2d(v[op.ins[0]], {a[0], a[1]}, {a[2], a[3]}, {a[4], a[5]}, a[6] != 0, a[7] != 0);
      case GLOBAL_AVGPOOL: {
        const auto& x = v[op.ins[0]];
        auto y = pool.get(0, {x.size(0), x.size(1), 1, 1}, x.options());
        return at::mean_out(y, x, {2, 3}, /*keepdim=*/true);
      }
      case FLATTEN:
        return v[op.ins[0]].flatten(a[0]);
      case ALIAS:  // an affine fused into the input copy of every (sparse) convolution that reads it
        return v[op.ins[0]];
      case CAT: {
        std::vector<torch::Tensor> parts;
        for (auto i : op.ins) parts.push_back(v[i]);
        std::vector<int64_t> sizes = parts[0].sizes().vec();
        sizes[a[0]] = 0;
        for (const auto& t : parts) sizes[a[0]] += t.size(a[0]);
        auto y = pool.get(0, sizes, parts[0].options());
        return at::cat_out(y, parts, a[0]);
      }
      default:
        TORCH_CHECK(false, "deploy executor: unknown operation ", op.kind);
    }
    return {};
  }

  int64_t slots_;
  std::vector<Op> ops_;
  mutable std::mutex pool_mutex_;
  mutable std::vector<std::vector<torch::Tensor>> buffers_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Program>(m, "Program")
      .def(py::init<int64_t>())
      .def("add", &Program::add)
      .def("run", &Program::run, py::call_guard<py::gil_scoped_release>())
      .def("inputs_of", &Program::inputs_of)
      .def("run_op", &Program::run_op)
      .def("__len__", &Program::size);
}
"""
