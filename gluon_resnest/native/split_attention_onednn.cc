// gluon_resnest_sa_sum_u8 registered in MXNet 1.9.1's own operator registry, so that it reads
// and writes oneDNN layouts in place.
//
// Through the operator-library interface (split_attention.cc) MXNet reorders every input out of
// its oneDNN layout before the call: the uint8 splits come from AMX/VNNI convolutions in
// N x H x W x C, so each call paid a transposition of every split and the next convolution a
// transposition back. Here the operator is an FComputeEx operator marked as oneDNN-aware: it
// reads splits that are in N x H x W x C as they are and writes its output in the same layout
// (declared to oneDNN, so the next convolution takes it without a reorder). Any other layout
// goes through MXNet's reorder to N x C x H x W and the plain kernel; both kernels give the same
// bits (split_attention_u8.h). GLUON_RESNEST_NATIVE_LAYOUT=nchw forces the plain path.
//
// The library is built against the C++ headers the MXNet 1.9.1 wheel ships and linked to its
// libmxnet.so. Two things differ between that build and this compiler, and are bridged here:
//  * the oneDNN C functions are not exported by libmxnet.so, so memory descriptors are filled
//    in field by field and data pointers come from the NDArray's storage;
//  * libmxnet.so's std::function calls pass by-value parameters by value, where this compiler's
//    std::function invokers take them by reference: every std::function handed to MXNet whose
//    parameters are not all references gets an invoker with the older convention (legacy()).
//    nnvm::Op::set_attr hands MXNet such a function (its updater takes an any*); this library's
//    own definition of nnvm::Op::UpdateAttrMap (bound to itself with -Bsymbolic) wraps it before
//    calling MXNet's.
#include <dlfcn.h>

#include <mxnet/ndarray.h>
#include <mxnet/op_attr_types.h>
#include <nnvm/node.h>
#include <nnvm/op.h>

#include <dnnl.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "split_attention_u8.h"

namespace {

// A std::function calling fn whose invoker takes by-value parameters by value.
template <typename R, typename... A>
std::function<R(A...)> legacy(R (*fn)(A...)) {
  std::function<R(A...)> f(fn);
  using Invoker = R (*)(const std::_Any_data&, A...);
  Invoker invoke = [](const std::_Any_data& data, A... args) -> R {
    return (*data._M_access<R (*)(A...)>())(args...);
  };
  // libstdc++'s layout: functor storage, manager, invoker.
  static_assert(sizeof(f) == sizeof(std::_Any_data) + 2 * sizeof(void*), "std::function layout");
  std::memcpy(reinterpret_cast<char*>(&f) + sizeof(std::_Any_data) + sizeof(void*), &invoke,
              sizeof invoke);
  return f;
}

const std::function<void(dmlc::any*)>* pending_update = nullptr;
void apply_pending_update(dmlc::any* map) { (*pending_update)(map); }

}  // namespace

namespace nnvm {
// Registration runs while the library loads, on one thread.
void Op::UpdateAttrMap(const std::string& key, std::function<void(any*)> updater) {
  using Update = void (*)(const std::string&, std::function<void(any*)>);
  static const Update mxnet_update = [] {
    void* lib = dlopen("libmxnet.so", RTLD_NOW | RTLD_NOLOAD);
    CHECK(lib != nullptr) << "gluon_resnest: libmxnet.so is not loaded";
    void* sym = dlsym(lib, "_ZN4nnvm2Op13UpdateAttrMapERKSsSt8functionIFvPN4dmlc3anyEEE");
    CHECK(sym != nullptr) << "gluon_resnest: libmxnet.so exports no nnvm::Op::UpdateAttrMap";
    return reinterpret_cast<Update>(sym);
  }();
  pending_update = &updater;
  mxnet_update(key, legacy(&apply_pending_update));
  pending_update = nullptr;
}
}  // namespace nnvm

namespace {

using gluon_resnest::kMaxRadix;
using mxnet::NDArray;
using mxnet::TShape;

constexpr char kName[] = "gluon_resnest_sa_sum_u8";

int radix_of(const nnvm::NodeAttrs& attrs) {
  auto it = attrs.dict.find("radix");
  CHECK(it != attrs.dict.end()) << kName << ": attribute 'radix' is required";
  const int radix = std::atoi(it->second.c_str());
  CHECK(radix >= 1 && radix <= kMaxRadix)
      << kName << ": radix must be in [1, " << kMaxRadix << "], got " << it->second;
  return radix;
}

bool pooled(const nnvm::NodeAttrs& attrs) {
  auto it = attrs.dict.find("pool");
  return it != attrs.dict.end() && (it->second == "1" || it->second == "True");
}

float out_max_of(const nnvm::NodeAttrs& attrs) {
  auto it = attrs.dict.find("max_calib_range");
  CHECK(it != attrs.dict.end()) << kName << ": attribute 'max_calib_range' is required";
  const float out_max = std::strtof(it->second.c_str(), nullptr);
  CHECK(out_max > 0.f) << kName << ": max_calib_range must be positive";
  return out_max;
}

// Sets shapes[i] to s, or checks that a known shapes[i] equals it.
void assign(mxnet::ShapeVector* shapes, size_t i, const TShape& s) {
  TShape& have = (*shapes)[i];
  if (!mxnet::shape_is_known(have)) {
    have = s;
  } else {
    CHECK(have == s) << kName << ": shape " << have << " where " << s << " is expected";
  }
}

uint32_t num_inputs(const nnvm::NodeAttrs& attrs) { return 3 * radix_of(attrs) + 1; }

bool infer_shape(const nnvm::NodeAttrs& attrs, mxnet::ShapeVector* in, mxnet::ShapeVector* out) {
  const int radix = radix_of(attrs);
  const TShape x = (*in)[1 + 2 * radix];
  const TShape& a = (*in)[0];
  if (!mxnet::shape_is_known(x) || !mxnet::shape_is_known(a)) return false;
  CHECK(x.ndim() == 4 && a.ndim() == 4 && a[0] == x[0] && a[1] == radix * x[1] && a[2] == 1 &&
        a[3] == 1)
      << kName << ": expected splits of shape (N, C, H, W) and an attention of shape "
      << "(N, radix * C, 1, 1), got " << x << " and " << a;
  for (int r = 1; r < radix; ++r)
    CHECK((*in)[1 + 2 * radix + r] == x) << kName << ": the splits differ in shape";
  for (int i = 1; i <= 2 * radix; ++i) assign(in, i, TShape(1, 1));
  TShape y = x;
  if (pooled(attrs)) {
    y[2] = (x[2] - 1) / 2 + 1;
    y[3] = (x[3] - 1) / 2 + 1;
  }
  assign(out, 0, y);
  assign(out, 1, TShape(1, 1));
  assign(out, 2, TShape(1, 1));
  return true;
}

bool infer_type(const nnvm::NodeAttrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  const int radix = radix_of(attrs);
  for (int r = 0; r < radix; ++r) {
    int& t = (*in)[1 + 2 * radix + r];
    CHECK(t == -1 || t == mshadow::kUint8) << kName << ": split " << r << " must be uint8";
    t = mshadow::kUint8;
  }
  for (int i = 0; i <= 2 * radix; ++i) {
    int& t = (*in)[i];
    CHECK(t == -1 || t == mshadow::kFloat32)
        << kName << ": the attention and the ranges must be float32";
    t = mshadow::kFloat32;
  }
  (*out)[0] = mshadow::kUint8;
  (*out)[1] = mshadow::kFloat32;
  (*out)[2] = mshadow::kFloat32;
  return true;
}

bool infer_storage(const nnvm::NodeAttrs&, const int dev_mask, mxnet::DispatchMode* mode,
                   std::vector<int>* in, std::vector<int>* out) {
  for (int s : *in) {
    if (s != mxnet::kDefaultStorage && s != -1) return false;
  }
  for (int& s : *out) s = mxnet::kDefaultStorage;
  *mode = mxnet::DispatchMode::kFComputeEx;
  return true;
}

// A plain (unblocked) 4-d descriptor, N x H x W x C or N x C x H x W in memory.
dnnl::memory::desc plain_desc(const TShape& s, dnnl_data_type_t type, bool nhwc) {
  dnnl_memory_desc_t d;
  std::memset(&d, 0, sizeof d);
  d.ndims = 4;
  for (int i = 0; i < 4; ++i) d.dims[i] = d.padded_dims[i] = s[i];
  d.data_type = type;
  d.format_kind = dnnl_blocked;
  dnnl_dims_t& st = d.format_desc.blocking.strides;
  if (nhwc) {
    st[1] = 1, st[3] = s[1], st[2] = s[1] * s[3], st[0] = s[1] * s[2] * s[3];
  } else {
    st[3] = 1, st[2] = s[3], st[1] = s[2] * s[3], st[0] = s[1] * s[2] * s[3];
  }
  return dnnl::memory::desc(d);
}

template <typename T>
T* data_of(const NDArray& a) {
  return reinterpret_cast<T*>(static_cast<char*>(a.storage_handle().dptr) + a.byte_offset());
}

// Calls per path (0: N x C x H x W, 1: N x H x W x C), for gluon_resnest_onednn_calls().
std::atomic<int64_t> calls[2];

bool force_plain() {
  const char* v = std::getenv("GLUON_RESNEST_NATIVE_LAYOUT");
  return v != nullptr && std::strcmp(v, "nchw") == 0;
}

void forward(const nnvm::NodeAttrs& attrs, const mxnet::OpContext& ctx,
             const std::vector<NDArray>& in, const std::vector<mxnet::OpReqType>& req,
             const std::vector<NDArray>& out) {
  const int radix = radix_of(attrs);
  const float out_max = out_max_of(attrs);
  if (req[0] == mxnet::kNullOp) return;
  CHECK(req[0] == mxnet::kWriteTo || req[0] == mxnet::kWriteInplace)
      << kName << ": only writes its output";
  gluon_resnest::SaSumU8 p;
  p.radix = radix;
  p.pool = pooled(attrs);
  const TShape& xs = in[1 + 2 * radix].shape();
  const TShape& ys = out[0].shape();
  p.N = xs[0], p.C = xs[1], p.H = xs[2], p.W = xs[3], p.Ho = ys[2], p.Wo = ys[3];
  // Splits already in N x H x W x C are read in place, and the output is written in it.
  bool nhwc = !force_plain();
  const dnnl::memory::desc x_nhwc = plain_desc(xs, dnnl_u8, true);
  for (int r = 0; r < radix && nhwc; ++r)
    nhwc = in[1 + 2 * radix + r].GetMKLDNNData(x_nhwc) != nullptr;
  NDArray& y = const_cast<NDArray&>(out[0]);
  // A view cannot take a oneDNN layout (null): then the plain path writes it.
  if (nhwc) nhwc = y.CreateMKLDNNData(plain_desc(ys, dnnl_u8, true)) != nullptr;
  if (!nhwc) CHECK(y.CreateMKLDNNData(plain_desc(ys, dnnl_u8, false)) != nullptr);
  std::vector<NDArray> plain;  // keeps reordered inputs alive
  plain.reserve(radix + 1);
  for (int r = 0; r < radix; ++r) {
    const float lo = std::fabs(*data_of<float>(in[1 + 2 * r]));
    const float hi = std::fabs(*data_of<float>(in[2 + 2 * r]));
    p.scale[r] = std::max(lo, hi) / out_max;
    const NDArray& x = in[1 + 2 * radix + r];
    if (nhwc) {
      p.x[r] = data_of<uint8_t>(x);
    } else {
      plain.push_back(x.Reorder2Default());
      p.x[r] = data_of<uint8_t>(plain.back());
    }
  }
  plain.push_back(in[0].Reorder2Default());
  p.a = data_of<float>(plain.back());
  p.y = data_of<uint8_t>(y);
  *data_of<float>(out[1]) = 0.f;
  *data_of<float>(out[2]) = out_max;
  calls[nhwc ? 1 : 0].fetch_add(1, std::memory_order_relaxed);
  if (nhwc) {
    static thread_local std::vector<uint8_t> plane;
    if (p.pool) plane.resize(p.N * p.H * p.W * p.C);
    gluon_resnest::sa_sum_u8_nhwc(p, plane.data());
  } else {
    gluon_resnest::sa_sum_u8_nchw(p);
  }
}

// Quantized values are not differentiable: every input's gradient is zero, as for MXNet's own
// quantized operators (a hybridized block builds its backward graph even for inference). The
// function is MXNet's (that of _contrib_dequantize), so the graph nodes it makes are MXNet's too.
nnvm::FGradient zero_gradients() {
  static const nnvm::OpMap<nnvm::FGradient>& grads =
      nnvm::Op::GetAttr<nnvm::FGradient>("FGradient");
  const nnvm::Op* dequantize = nnvm::Op::Get("_contrib_dequantize");
  CHECK(grads.count(dequantize)) << "gluon_resnest: MXNet's dequantize has no FGradient";
  return grads[dequantize];
}

}  // namespace

// How many times the operator ran on each path: nhwc = 1 (oneDNN layout read in place) or 0.
extern "C" int64_t gluon_resnest_onednn_calls(int nhwc) {
  return calls[nhwc ? 1 : 0].load(std::memory_order_relaxed);
}

NNVM_REGISTER_OP(gluon_resnest_sa_sum_u8)
    .describe("INT8 Split-Attention weighted sum (optionally with the avd 3x3/2 average "
              "pooling). Inputs: attention, min_0, max_0, ..., x_0, ..., x_{radix-1}.")
    .set_num_inputs(num_inputs)
    .set_num_outputs(3)
    .set_attr<mxnet::FInferShape>("FInferShape", legacy(&infer_shape))
    .set_attr<nnvm::FInferType>("FInferType", legacy(&infer_type))
    .set_attr<mxnet::FInferStorageType>("FInferStorageType", legacy(&infer_storage))
    .set_attr<bool>("TIsMKLDNN", true)
    .set_attr<mxnet::FComputeEx>("FComputeEx<cpu>", forward)
    .set_attr<nnvm::FGradient>("FGradient", zero_gradients())
    .add_argument("data", "NDArray-or-Symbol[]", "attention, ranges and uint8 splits")
    .add_argument("radix", "int", "number of splits")
    .add_argument("max_calib_range", "float", "upper end of the output's calibrated range")
    .add_argument("pool", "int", "1: apply the 3x3, stride 2, padding 1 average pooling");
