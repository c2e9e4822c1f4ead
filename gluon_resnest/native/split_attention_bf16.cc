// bfloat16 inference operators: the feature maps of gluon_resnest.deploy.fast_inference(...,
// dtype='bfloat16') in bfloat16 N x H x W x C between oneDNN 3's bf16 convolutions.
//
// This file is part of split_attention_onednn.cc's translation unit (included at its end): it
// uses that file's helpers (plain_desc, data_of, scratch, the convolution attributes and shapes,
// conv_primitive) and conv_dnnl3.cc's library through the same handle.
//
// * gluon_resnest_conv_bf16: gluon_resnest_conv with a bfloat16 source (a float32 one is
//   converted first), bfloat16 output and residual, weights converted to bfloat16 once when the
//   primitive is made, float32 bias; oneDNN accumulates in float32. 3x3 convolutions with the
//   winograd attribute may run as Winograd F(4x4, 3x3) (conv_dnnl3.cc).
// * gluon_resnest_sa_gap_nhwc_bf16: the pooled attention input from bfloat16 splits, summed in
//   float32, written in float32 (the attention's small convolutions stay float32).
// * gluon_resnest_sa_sum_nhwc_bf16: the weighted sum (and the avd pooling) of bfloat16 splits
//   with a float32 attention, computed in float32 and rounded to bfloat16 once.
//
// Rounding float32 to bfloat16 is to nearest, ties to even (as oneDNN's reorders).

namespace {

constexpr char kConvBf16[] = "gluon_resnest_conv_bf16";
constexpr char kGapBf16[] = "gluon_resnest_sa_gap_nhwc_bf16";
constexpr char kSumBf16[] = "gluon_resnest_sa_sum_nhwc_bf16";

using ConvertFn = int (*)(const void*, void*, int64_t, int64_t, int64_t, int64_t, int, int, int,
                          int);
ConvertFn bf16_convert = nullptr;
std::atomic<int64_t> bf16_calls[3];  // conv, gap, sum

inline float bf16_to_f32(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
    return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  }
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Whether a is a bfloat16 tensor in N x H x W x C, as oneDNN knows it.
bool is_nhwc_bf16(const NDArray& a) {
  return !force_plain() && a.dtype() == mshadow::kBfloat16 && a.IsMKLDNNData() &&
         a.GetMKLDNNData(plain_desc(a.shape(), dnnl_bf16, true)) != nullptr;
}

// Room for n bfloat16 values in one of scratch()'s buffers.
uint16_t* scratch_bf16(int slot, size_t n) {
  return reinterpret_cast<uint16_t*>(scratch(slot, (n + 1) / 2));
}

// a as bfloat16 N x H x W x C: in place when it is that already, else converted into scratch
// slot (from float32 or bfloat16, any layout).
const uint16_t* nhwc_bf16_of(const NDArray& a, int slot, NDArray* keep) {
  const TShape& s = a.shape();
  if (is_nhwc_bf16(a)) return data_of<uint16_t>(a);
  const bool f32 = a.dtype() == mshadow::kFloat32;
  CHECK(f32 || a.dtype() == mshadow::kBfloat16)
      << kConvBf16 << ": inputs must be float32 or bfloat16";
  bool nhwc = false;
  if (f32 && is_nhwc(a)) {
    nhwc = true;
    *keep = a;
  } else {
    *keep = as_plain(a);
  }
  uint16_t* t = scratch_bf16(slot, s.Size());
  CHECK_EQ(bf16_convert(data_of<char>(*keep), t, s[0], s[1], s[2], s[3], nhwc, !f32, 1, 1), 0)
      << kConvBf16 << ": the conversion to bfloat16 failed";
  return t;
}

bool conv_bf16_infer_type(const nnvm::NodeAttrs& attrs, std::vector<int>* in,
                          std::vector<int>* out) {
  int& x = (*in)[0];
  CHECK(x == -1 || x == mshadow::kFloat32 || x == mshadow::kBfloat16)
      << kConvBf16 << ": the input must be float32 or bfloat16";
  if (x == -1) x = mshadow::kBfloat16;
  for (size_t i = 1; i < 3 && i < in->size(); ++i) {
    int& t = (*in)[i];
    CHECK(t == -1 || t == mshadow::kFloat32) << kConvBf16 << ": weight and bias must be float32";
    t = mshadow::kFloat32;
  }
  if (in->size() > 3) {
    int& t = (*in)[3];
    CHECK(t == -1 || t == mshadow::kBfloat16) << kConvBf16 << ": the residual must be bfloat16";
    t = mshadow::kBfloat16;
  }
  (*out)[0] = mshadow::kBfloat16;
  return true;
}

bool gap_bf16_infer_type(const nnvm::NodeAttrs& attrs, std::vector<int>* in,
                         std::vector<int>* out) {
  int& x = (*in)[0];
  CHECK(x == -1 || x == mshadow::kBfloat16) << kGapBf16 << ": the input must be bfloat16";
  x = mshadow::kBfloat16;
  (*out)[0] = mshadow::kFloat32;
  return true;
}

bool sum_bf16_infer_type(const nnvm::NodeAttrs& attrs, std::vector<int>* in,
                         std::vector<int>* out) {
  int& a = (*in)[0];
  int& x = (*in)[1];
  CHECK(a == -1 || a == mshadow::kFloat32) << kSumBf16 << ": the attention must be float32";
  CHECK(x == -1 || x == mshadow::kBfloat16) << kSumBf16 << ": the splits must be bfloat16";
  a = mshadow::kFloat32;
  x = mshadow::kBfloat16;
  (*out)[0] = mshadow::kBfloat16;
  return true;
}

void conv_bf16_forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                       const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                       const std::vector<NDArray>& out) {
  CHECK(conv_lib.create != nullptr && bf16_convert != nullptr)
      << kConvBf16 << ": the oneDNN 3 library is not loaded (" << conv_lib_error << ")";
  if (req[0] == mxnet::kNullOp) return;
  const ConvAttrs a = conv_attrs(attrs);
  const TShape& xs = in[0].shape();
  const TShape& ys = out[0].shape();
  ConvSpec spec;
  std::memset(&spec, 0, sizeof spec);
  spec.n = xs[0], spec.ic = xs[1], spec.ih = xs[2], spec.iw = xs[3];
  spec.oc = ys[1], spec.oh = ys[2], spec.ow = ys[3];
  spec.kh = a.kernel[0], spec.kw = a.kernel[1], spec.sh = a.stride[0], spec.sw = a.stride[1];
  spec.pt = a.pad[0], spec.pl = a.pad[1];
  spec.pb = (spec.oh - 1) * spec.sh + a.dilate[0] * (spec.kh - 1) + 1 - spec.ih - spec.pt;
  spec.pr = (spec.ow - 1) * spec.sw + a.dilate[1] * (spec.kw - 1) + 1 - spec.iw - spec.pl;
  spec.dh = a.dilate[0] - 1, spec.dw = a.dilate[1] - 1, spec.groups = a.groups;
  spec.relu = a.relu, spec.sum = a.sum, spec.has_bias = 1;
  // 1: Winograd with bfloat16 products, 2: with float32 products (conv_dnnl3.cc)
  spec.winograd = a.winograd ? static_cast<int32_t>(int_attr(attrs, "winograd", 0)) : 0;
  spec.src_nhwc = 1;
  spec.reserved = 1;  // bfloat16 (grc_conv_spec.bf16 in conv_dnnl3.cc)
  NDArray x_keep;
  const uint16_t* src = nhwc_bf16_of(in[0], 0, &x_keep);
  bf16_calls[0].fetch_add(1, std::memory_order_relaxed);
  void* conv = conv_primitive(spec, in[1], in[2]);
  NDArray& y = const_cast<NDArray&>(out[0]);
  const dnnl::memory::desc y_nhwc = plain_desc(ys, dnnl_bf16, true);
  uint16_t* dst = nullptr;
  bool direct;
  if (a.sum) {
    // The residual, staged before the output is declared N x H x W x C (it may be the same
    // memory), then copied into the output unless the output is it already.
    const NDArray& r = in[3];
    NDArray r_keep;
    const uint16_t* rp = is_nhwc_bf16(r) ? data_of<uint16_t>(r) : nhwc_bf16_of(r, 1, &r_keep);
    direct = y.CreateMKLDNNData(y_nhwc) != nullptr;
    dst = direct ? data_of<uint16_t>(y) : scratch_bf16(2, ys.Size());
    if (dst != rp) std::memcpy(dst, rp, sizeof(uint16_t) * ys.Size());
  } else {
    direct = y.CreateMKLDNNData(y_nhwc) != nullptr;
    dst = direct ? data_of<uint16_t>(y) : scratch_bf16(2, ys.Size());
  }
  CHECK_EQ(conv_lib.run(conv, reinterpret_cast<const float*>(src), reinterpret_cast<float*>(dst)),
           0)
      << kConvBf16 << ": the convolution failed";
  // A view cannot take a oneDNN layout: then the output is converted into it.
  if (!direct) {
    CHECK_EQ(bf16_convert(dst, data_of<uint16_t>(y), ys[0], ys[1], ys[2], ys[3], 1, 1, 0, 1), 0);
  }
}

// ---- gluon_resnest_sa_gap_nhwc_bf16: y[n, c] = mean over (h, w) of sum_r x[n, r*C + c, h, w]

void gap_bf16_forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                      const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                      const std::vector<NDArray>& out) {
  if (req[0] == mxnet::kNullOp) return;
  const int radix = f32_radix(attrs, kGapBf16);
  const TShape& xs = in[0].shape();
  const int64_t N = xs[0], RC = xs[1], C = RC / radix, HW = xs[2] * xs[3];
  float* yp = data_of<float>(out[0]);
  const float inv = 1.f / static_cast<float>(HW);
  bf16_calls[1].fetch_add(1, std::memory_order_relaxed);
  if (is_nhwc_bf16(in[0])) {
    const uint16_t* x = data_of<uint16_t>(in[0]);
    constexpr int64_t kBlock = 64;
    const int64_t blocks = (RC + kBlock - 1) / kBlock;
    float* acc = scratch(1, N * RC);
#pragma omp parallel for
    for (int64_t nb = 0; nb < N * blocks; ++nb) {
      const int64_t n = nb / blocks, c0 = (nb % blocks) * kBlock;
      const int64_t c1 = std::min(RC, c0 + kBlock);
      float* a = acc + n * RC;
      for (int64_t c = c0; c < c1; ++c) a[c] = 0.f;
      const uint16_t* xn = x + n * HW * RC;
      for (int64_t p = 0; p < HW; ++p) {
        const uint16_t* row = xn + p * RC;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) a[c] += bf16_to_f32(row[c]);
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        float s = 0.f;
        for (int r = 0; r < radix; ++r) s += acc[n * RC + r * C + c];
        yp[n * C + c] = s * inv;
      }
    }
    return;
  }
  const NDArray xa = as_plain(in[0]);
  const uint16_t* x = data_of<uint16_t>(xa);
#pragma omp parallel for
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t n = nc / C, c = nc % C;
    float s = 0.f;
    for (int r = 0; r < radix; ++r) {
      const uint16_t* plane = x + (n * RC + r * C + c) * HW;
      float t = 0.f;
      for (int64_t p = 0; p < HW; ++p) t += bf16_to_f32(plane[p]);
      s += t;
    }
    yp[nc] = s * inv;
  }
}

// ---- gluon_resnest_sa_sum_nhwc_bf16: y[n, c] = sum_r a[n, r*C + c] * x[n, r*C + c], optionally
// 3x3/2 average pooled with padding 1 (padding counted) ----

void sum_bf16_forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                      const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
                      const std::vector<NDArray>& out) {
  if (req[0] == mxnet::kNullOp) return;
  const int radix = f32_radix(attrs, kSumBf16);
  const bool pool = pooled(attrs);
  const TShape& xs = in[1].shape();
  const TShape& ys = out[0].shape();
  const int64_t N = xs[0], RC = xs[1], C = RC / radix, H = xs[2], W = xs[3];
  const int64_t Ho = ys[2], Wo = ys[3];
  const NDArray a_plain = as_plain(in[0]);
  const float* a = data_of<float>(a_plain);
  NDArray& y = const_cast<NDArray&>(out[0]);
  bf16_calls[2].fetch_add(1, std::memory_order_relaxed);
  // The splits as N x H x W x C (in place, or converted), the output written in that layout
  // when it can take it, else converted to N x C x H x W at the end.
  NDArray x_keep;
  const uint16_t* x;
  if (is_nhwc_bf16(in[1])) {
    x = data_of<uint16_t>(in[1]);
  } else {
    CHECK(bf16_convert != nullptr) << kSumBf16 << ": the oneDNN 3 library is not loaded";
    x_keep = as_plain(in[1]);
    uint16_t* t = scratch_bf16(0, xs.Size());
    CHECK_EQ(bf16_convert(data_of<uint16_t>(x_keep), t, N, RC, H, W, 0, 1, 1, 1), 0);
    x = t;
  }
  const bool direct = y.CreateMKLDNNData(plain_desc(ys, dnnl_bf16, true)) != nullptr;
  uint16_t* yp = direct ? data_of<uint16_t>(y) : scratch_bf16(2, ys.Size());
  if (!pool) {
#pragma omp parallel for
    for (int64_t nh = 0; nh < N * H; ++nh) {
      const int64_t n = nh / H;
      const float* an = a + n * RC;
      static thread_local std::vector<float> acc;
      if (static_cast<int64_t>(acc.size()) < C) acc.resize(C);
      float* o = acc.data();
      for (int64_t w = 0; w < W; ++w) {
        const uint16_t* row = x + (nh * W + w) * RC;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = an[c] * bf16_to_f32(row[c]);
        for (int r = 1; r < radix; ++r) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] += an[r * C + c] * bf16_to_f32(row[r * C + c]);
        }
        uint16_t* q = yp + (nh * W + w) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) q[c] = f32_to_bf16(o[c]);
      }
    }
  } else {
    float* plane = scratch(1, N * H * W * C);
#pragma omp parallel for
    for (int64_t nh = 0; nh < N * H; ++nh) {
      const int64_t n = nh / H;
      const float* an = a + n * RC;
      for (int64_t w = 0; w < W; ++w) {
        const uint16_t* row = x + (nh * W + w) * RC;
        float* o = plane + (nh * W + w) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = an[c] * bf16_to_f32(row[c]);
        for (int r = 1; r < radix; ++r) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] += an[r * C + c] * bf16_to_f32(row[r * C + c]);
        }
      }
    }
#pragma omp parallel for
    for (int64_t nh = 0; nh < N * Ho; ++nh) {
      const int64_t n = nh / Ho, oh = nh % Ho;
      static thread_local std::vector<float> acc;
      if (static_cast<int64_t>(acc.size()) < C) acc.resize(C);
      float* o = acc.data();
      for (int64_t ow = 0; ow < Wo; ++ow) {
        for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
        for (int64_t ih = 2 * oh - 1; ih <= 2 * oh + 1; ++ih) {
          if (ih < 0 || ih >= H) continue;
          for (int64_t iw = 2 * ow - 1; iw <= 2 * ow + 1; ++iw) {
            if (iw < 0 || iw >= W) continue;
            const float* p = plane + ((n * H + ih) * W + iw) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) o[c] += p[c];
          }
        }
        uint16_t* q = yp + (nh * Wo + ow) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) q[c] = f32_to_bf16(o[c] * (1.f / 9.f));
      }
    }
  }
  if (!direct) {
    CHECK(bf16_convert != nullptr) << kSumBf16 << ": the oneDNN 3 library is not loaded";
    CHECK_EQ(bf16_convert(yp, data_of<uint16_t>(y), ys[0], ys[1], ys[2], ys[3], 1, 1, 0, 1), 0);
  }
}

// fn, with the fault GLUON_RESNEST_NATIVE_SELFTEST_PERTURB may ask for: one added to the first
// element of the first output (bfloat16 or float32), or an abort.
template <ComputeEx fn, const char* name>
void with_selftest_fault_bf16(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
                              const std::vector<NDArray>& in,
                              const std::vector<mxnet::OpReqType>& req,
                              const std::vector<NDArray>& out) {
  const int fault = gluon_resnest::selftest_fault(name);
  if (fault == 2) std::abort();
  fn(attrs, ctx, in, req, out);
  if (fault != 1 || req[0] == mxnet::kNullOp) return;
  if (out[0].dtype() == mshadow::kBfloat16) {
    uint16_t* p = data_of<uint16_t>(out[0]);
    p[0] = f32_to_bf16(bf16_to_f32(p[0]) + 1.f);
  } else {
    data_of<float>(out[0])[0] += 1.f;
  }
}

}  // namespace

// Finds grc_convert in conv_dnnl3.cc's library (after gluon_resnest_set_conv_library); 0 on
// success, else 1.
extern "C" int gluon_resnest_bf16_set_conv_library(const char* path) {
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr || conv_lib.create == nullptr) return 1;
  return load_symbol(lib, "grc_convert", &bf16_convert) ? 0 : 1;
}

// Calls of the bfloat16 operators: 0 gluon_resnest_conv_bf16, 1 the pooled input, 2 the sum.
extern "C" int64_t gluon_resnest_bf16_calls(int op) {
  return op >= 0 && op < 3 ? bf16_calls[op].load(std::memory_order_relaxed) : -1;
}

NNVM_REGISTER_OP(gluon_resnest_conv_bf16)
    .describe("bfloat16 inference convolution on oneDNN 3 (float32 accumulation) with its "
              "float32 bias, optionally the bfloat16 residual sum and the ReLU, writing "
              "bfloat16 N x H x W x C. Inputs: data (float32 or bfloat16), weight, bias "
              "(float32)[, residual].")
    .set_num_inputs(conv_num_inputs)
    .set_num_outputs(1)
    .set_attr<mxnet::FInferShape>("FInferShape", legacy(&conv_infer_shape))
    .set_attr<nnvm::FInferType>("FInferType", legacy(&conv_bf16_infer_type))
    .set_attr<mxnet::FInferStorageType>("FInferStorageType", legacy(&infer_storage))
    .set_attr<nnvm::FInplaceOption>("FInplaceOption", conv_inplace)
    .set_attr<bool>("TIsMKLDNN", true)
    .set_attr<mxnet::FComputeEx>("FComputeEx<cpu>",
                                 with_selftest_fault_bf16<conv_bf16_forward, kConvBf16>)
    .set_attr<nnvm::FGradient>("FGradient", zero_gradients())
    .add_argument("data", "NDArray-or-Symbol[]", "data, weight, bias[, residual]")
    .add_argument("kernel", "Shape", "kernel size (h, w)")
    .add_argument("stride", "Shape", "stride (h, w)")
    .add_argument("pad", "Shape", "padding (h, w) on both sides")
    .add_argument("dilate", "Shape", "dilation (h, w)")
    .add_argument("num_filter", "int", "output channels")
    .add_argument("num_group", "int", "groups")
    .add_argument("relu", "int", "1: ReLU at the end")
    .add_argument("sum", "int", "1: add the residual (fourth input) before the ReLU")
    .add_argument("winograd", "int",
                  "1: a 3x3 convolution of stride 1 may run as Winograd F(4x4, 3x3) "
                  "(float32 transforms, bfloat16 products with float32 accumulation); "
                  "2: the same with float32 products");

NNVM_REGISTER_OP(gluon_resnest_sa_gap_nhwc_bf16)
    .describe("Split-Attention pooled input (inference) of bfloat16 splits, in float32: the "
              "mean over the feature map of the sum of the radix splits.")
    .set_num_inputs(1)
    .set_num_outputs(1)
    .set_attr<mxnet::FInferShape>("FInferShape", legacy(&gap_infer_shape))
    .set_attr<nnvm::FInferType>("FInferType", legacy(&gap_bf16_infer_type))
    .set_attr<mxnet::FInferStorageType>("FInferStorageType", legacy(&infer_storage))
    .set_attr<bool>("TIsMKLDNN", true)
    .set_attr<mxnet::FComputeEx>("FComputeEx<cpu>",
                                 with_selftest_fault_bf16<gap_bf16_forward, kGapBf16>)
    .set_attr<nnvm::FGradient>("FGradient", zero_gradients())
    .add_argument("data", "NDArray-or-Symbol", "x, (N, radix * C, H, W), bfloat16")
    .add_argument("radix", "int", "number of splits");

NNVM_REGISTER_OP(gluon_resnest_sa_sum_nhwc_bf16)
    .describe("Split-Attention weighted sum (inference) of bfloat16 splits with a float32 "
              "attention, optionally with the avd 3x3/2 average pooling, written in bfloat16. "
              "Inputs: attention, x.")
    .set_num_inputs(2)
    .set_num_outputs(1)
    .set_attr<mxnet::FInferShape>("FInferShape", legacy(&sum_infer_shape))
    .set_attr<nnvm::FInferType>("FInferType", legacy(&sum_bf16_infer_type))
    .set_attr<mxnet::FInferStorageType>("FInferStorageType", legacy(&infer_storage))
    .set_attr<bool>("TIsMKLDNN", true)
    .set_attr<mxnet::FComputeEx>("FComputeEx<cpu>",
                                 with_selftest_fault_bf16<sum_bf16_forward, kSumBf16>)
    .set_attr<nnvm::FGradient>("FGradient", zero_gradients())
    .add_argument("data", "NDArray-or-Symbol[]", "attention (float32), x (bfloat16)")
    .add_argument("radix", "int", "number of splits")
    .add_argument("pool", "int", "1: apply the 3x3, stride 2, padding 1 average pooling");
