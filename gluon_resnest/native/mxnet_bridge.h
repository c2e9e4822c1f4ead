// Every place where split_attention_onednn.cc relies on MXNet 1.9.1's internals rather than on a
// stable interface. Each assumption is checked before the library is built or loaded
// (gluon_resnest/native/guards.py names the same assumptions, one check each); the operators are
// checked against MXNet's own on the machine before they are used (selfcheck.py).
//
// The library is built against the C++ headers the MXNet 1.9.1 wheel ships and linked to its
// libmxnet.so (built with GCC, the pre-C++11 std::string ABI, oneDNN 2.4 inside):
//  * the oneDNN C functions are not exported by libmxnet.so, so memory descriptors are filled in
//    field by field (plain_desc, blocked16_desc in split_attention_onednn.cc) and data pointers
//    come from the NDArray's storage;
//  * libmxnet.so's std::function calls pass by-value parameters by value, where this compiler's
//    std::function invokers take them by reference: every std::function handed to MXNet whose
//    parameters are not all references gets an invoker with the older convention (legacy());
//  * nnvm::Op::set_attr hands MXNet such a function (its updater takes an any*): this library's
//    own definition of nnvm::Op::UpdateAttrMap (bound to itself with -Bsymbolic) wraps it before
//    calling MXNet's, found by its mangled name.
#ifndef GLUON_RESNEST_MXNET_BRIDGE_H_
#define GLUON_RESNEST_MXNET_BRIDGE_H_

#include <dlfcn.h>

#include <nnvm/op.h>

#include <cstring>
#include <functional>
#include <string>

// Assumption: libmxnet.so was built with the pre-C++11 std::string ABI (guards.py: the mangled
// name below, with std::string as "Ss", is exported by libmxnet.so).
#if !defined(_GLIBCXX_USE_CXX11_ABI) || _GLIBCXX_USE_CXX11_ABI != 0
#error "gluon_resnest: build with -D_GLIBCXX_USE_CXX11_ABI=0, the ABI of libmxnet.so"
#endif

namespace gluon_resnest_bridge {

// Assumption: libstdc++'s std::function is {functor storage, manager, invoker} (guards.py: the
// compiler is GCC with libstdc++; the static_assert checks the size).
template <typename R, typename... A>
std::function<R(A...)> legacy(R (*fn)(A...)) {
  std::function<R(A...)> f(fn);
  using Invoker = R (*)(const std::_Any_data&, A...);
  Invoker invoke = [](const std::_Any_data& data, A... args) -> R {
    return (*data._M_access<R (*)(A...)>())(args...);
  };
  static_assert(sizeof(f) == sizeof(std::_Any_data) + 2 * sizeof(void*), "std::function layout");
  std::memcpy(reinterpret_cast<char*>(&f) + sizeof(std::_Any_data) + sizeof(void*), &invoke,
              sizeof invoke);
  return f;
}

inline const std::function<void(dmlc::any*)>* pending_update = nullptr;
inline void apply_pending_update(dmlc::any* map) { (*pending_update)(map); }

// Assumption: libmxnet.so exports nnvm::Op::UpdateAttrMap under this mangled name (guards.py
// looks it up before loading).
constexpr char kUpdateAttrMap[] = "_ZN4nnvm2Op13UpdateAttrMapERKSsSt8functionIFvPN4dmlc3anyEEE";

}  // namespace gluon_resnest_bridge

namespace nnvm {
// Registration runs while the library loads, on one thread.
void Op::UpdateAttrMap(const std::string& key, std::function<void(any*)> updater) {
  using Update = void (*)(const std::string&, std::function<void(any*)>);
  static const Update mxnet_update = [] {
    void* lib = dlopen("libmxnet.so", RTLD_NOW | RTLD_NOLOAD);
    CHECK(lib != nullptr) << "gluon_resnest: libmxnet.so is not loaded";
    void* sym = dlsym(lib, gluon_resnest_bridge::kUpdateAttrMap);
    CHECK(sym != nullptr) << "gluon_resnest: libmxnet.so exports no nnvm::Op::UpdateAttrMap";
    return reinterpret_cast<Update>(sym);
  }();
  gluon_resnest_bridge::pending_update = &updater;
  mxnet_update(key, gluon_resnest_bridge::legacy(&gluon_resnest_bridge::apply_pending_update));
  gluon_resnest_bridge::pending_update = nullptr;
}
}  // namespace nnvm

#endif  // GLUON_RESNEST_MXNET_BRIDGE_H_
