// Autograd of the public matmul ops (sparse24_mm, tiled_csl_mm, spense_mm), for the activations and the bias.
//
// A pruned, packed weight is frozen, but the layers around it may train (adapters on top of a sparse base, or
// calibrating later layers through earlier ones), so gradients flow through x:
//     y = x @ W.T + b   =>   dL/dx = dL/dy @ W,   dL/db = sum over tokens of dL/dy.
// W is rebuilt densely for the backward pass by an internal op per format (_sparse24_dense, _tiled_csl_dense,
// _spense_dense: the formats' own unpackers, in Python, unchecked -- the forward op checked the layout; see
// python/spmm/formats/dense_ops.py); backward is rare (training), so the call back into Python costs nothing that
// matters. What W is rebuilt from is saved only where x needs its gradient. The packed tensors and the kernel layouts
// after bias (copies of the packed weight for the CUDA kernels) are as frozen as the weight: a request for the
// gradient of one raises instead of returning a silent None.
//
// Why C++: this kernel runs on every call outside torch.inference_mode -- torch.no_grad() included, which is what
// Hugging Face generate() runs under -- so it must cost next to nothing when no input needs a gradient: then it only
// redispatches below autograd. The backward node (torch::autograd::Function) is built only where one is needed.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

namespace spmm::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<at::Tensor>;

// An op's typed handle (each caller keeps its own in a function-local static: looked up once).
template <class Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// What torch::autograd::Function makes an input edge of: every Tensor argument, a given optional one.
inline int64_t edge_count(const at::Tensor&) { return 1; }
inline int64_t edge_count(const OptionalTensor& t) { return t.has_value() && t->defined() ? 1 : 0; }
template <class T>
int64_t edge_count(const T&) {
  return 0;
}

inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const OptionalTensor& t) { return t.has_value() && requires_grad(*t); }
template <class T>
bool requires_grad(const T&) {
  return false;
}

// A saved optional argument back as one (saved as an undefined tensor where it was not given).
inline OptionalTensor given(const at::Tensor& saved) { return saved.defined() ? OptionalTensor(saved) : std::nullopt; }

template <class Signature>
struct Arity;
template <class... Args>
struct Arity<at::Tensor(Args...)> {
  static constexpr size_t value = sizeof...(Args);
};

// ------------------------------------------------------------------------------------------------- the ops ----------
// Each op: its schema's C++ signature (the arguments after bias are the kernel layouts: a trailing optional layout
// added to the schema is one more `const OptionalTensor&` here, and nothing else), where bias sits, what backward
// saves of the arguments (only where x needs its gradient) and W from what it saved.

struct Sparse24Mm {
  static constexpr const char* kName = "spmm::sparse24_mm";
  using Signature = at::Tensor(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                               const OptionalTensor& bias, const OptionalTensor& dvalues, const OptionalTensor& dmeta,
                               const OptionalTensor& sm90_e, const OptionalTensor& sm80_a, const OptionalTensor& sm80_e);
  static constexpr size_t kBias = 3;

  template <class Args>
  static void save(AutogradContext* ctx, const Args& args) {
    ctx->save_for_backward({std::get<1>(args), std::get<2>(args)});
  }
  static at::Tensor weight(AutogradContext* ctx) {
    static const auto dense = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("spmm::_sparse24_dense");
    const variable_list s = ctx->get_saved_variables();
    return dense.call(s[0], s[1]);
  }
};

struct TiledCslMm {
  static constexpr const char* kName = "spmm::tiled_csl_mm";
  using Signature = at::Tensor(const at::Tensor& x, const at::Tensor& values, const at::Tensor& locations,
                               const at::Tensor& tile_offsets, int64_t out_features, int64_t tile_m, int64_t tile_k,
                               const OptionalTensor& bias, const OptionalTensor& words,
                               const OptionalTensor& word_offsets, const OptionalTensor& delta_values,
                               const OptionalTensor& delta_codes, const OptionalTensor& delta_offsets,
                               const OptionalTensor& cpu_bitmap);
  static constexpr size_t kBias = 7;

  // The stream, and the layouts for a call that was given them with an empty stream (W then comes from one).
  template <class Args>
  static void save(AutogradContext* ctx, const Args& args) {
    ctx->save_for_backward({std::get<1>(args), std::get<2>(args), std::get<3>(args),
                            std::get<8>(args).value_or(at::Tensor()), std::get<9>(args).value_or(at::Tensor()),
                            std::get<10>(args).value_or(at::Tensor()), std::get<11>(args).value_or(at::Tensor()),
                            std::get<12>(args).value_or(at::Tensor())});
    ctx->saved_data["out_features"] = std::get<4>(args);
    ctx->saved_data["in_features"] = std::get<0>(args).sym_size(-1);
    ctx->saved_data["tile_m"] = std::get<5>(args);
    ctx->saved_data["tile_k"] = std::get<6>(args);
  }
  static at::Tensor weight(AutogradContext* ctx) {
    using DenseSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, c10::SymInt,
                                      int64_t, int64_t, const OptionalTensor&, const OptionalTensor&,
                                      const OptionalTensor&, const OptionalTensor&, const OptionalTensor&);
    static const auto dense = find_op<DenseSignature>("spmm::_tiled_csl_dense");
    const variable_list s = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    return dense.call(s[0], s[1], s[2], data["out_features"].toInt(), data["in_features"].toSymInt(),
                      data["tile_m"].toInt(), data["tile_k"].toInt(), given(s[3]), given(s[4]), given(s[5]),
                      given(s[6]), given(s[7]));
  }
};

struct SpenseMm {
  static constexpr const char* kName = "spmm::spense_mm";
  using Signature = at::Tensor(const at::Tensor& x, const at::Tensor& dense_weight, const at::Tensor& values,
                               const at::Tensor& meta, const at::Tensor& row_index, const OptionalTensor& bias,
                               const OptionalTensor& dvalues, const OptionalTensor& dmeta,
                               const OptionalTensor& sm90_e, const OptionalTensor& sm80_a,
                               const OptionalTensor& sm80_e);
  static constexpr size_t kBias = 5;

  template <class Args>
  static void save(AutogradContext* ctx, const Args& args) {
    ctx->save_for_backward({std::get<1>(args), std::get<2>(args), std::get<3>(args), std::get<4>(args)});
  }
  static at::Tensor weight(AutogradContext* ctx) {
    using DenseSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
    static const auto dense = find_op<DenseSignature>("spmm::_spense_dense");
    const variable_list s = ctx->get_saved_variables();
    return dense.call(s[0], s[1], s[2], s[3]);
  }
};

// ---------------------------------------------------------------------------------------- the autograd node ---------
template <class Op>
struct MatmulFunction : torch::autograd::Function<MatmulFunction<Op>> {
  template <class... Args>
  static at::Tensor forward(AutogradContext* ctx, const Args&... args) {
    static const auto op = find_op<typename Op::Signature>(Op::kName);
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = op.call(args...);
    }
    const auto arguments = std::forward_as_tuple(args...);
    if (std::get<0>(arguments).requires_grad()) Op::save(ctx, arguments);  // W is for dL/dx alone
    // Input edges: x is the first; the bias's index, where given, counts the tensors before it.
    const std::array<int64_t, sizeof...(Args)> edges{edge_count(args)...};
    int64_t bias_edge = -1, edge_total = 0;
    for (size_t i = 0; i < edges.size(); ++i) {
      if (i == Op::kBias && edges[i]) bias_edge = edge_total;
      edge_total += edges[i];
    }
    ctx->saved_data["bias_edge"] = bias_edge;
    ctx->saved_data["edges"] = edge_total;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const int64_t bias_edge = ctx->saved_data["bias_edge"].toInt(), edges = ctx->saved_data["edges"].toInt();
    for (int64_t e = 1; e < edges; ++e) {
      TORCH_CHECK(e == bias_edge || !ctx->needs_input_grad(e), Op::kName,
                  ": the packed weight is not differentiable; only x and bias get gradients");
    }
    const at::Tensor& grad_y = grad_outputs[0];
    variable_list grads(Arity<typename Op::Signature>::value);  // one per argument; undefined: no gradient
    if (ctx->needs_input_grad(0)) grads[0] = at::matmul(grad_y, Op::weight(ctx));
    if (bias_edge > 0 && ctx->needs_input_grad(bias_edge)) {
      grads[Op::kBias] = grad_y.reshape_symint({-1, grad_y.sym_size(-1)}).sum(0);
    }
    return grads;
  }
};

// The Autograd kernel: below autograd straight away unless an input needs a gradient (the common inference call).
template <class Op, class Signature = typename Op::Signature>
struct AutogradKernel;
template <class Op, class... Args>
struct AutogradKernel<Op, at::Tensor(Args...)> {
  static at::Tensor call(c10::DispatchKeySet keys, Args... args) {
    if (!(c10::GradMode::is_enabled() && (requires_grad(args) || ...))) {
      static const auto op = find_op<typename Op::Signature>(Op::kName);
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      return op.redispatch(keys & c10::after_ADInplaceOrView_keyset, args...);
    }
    return MatmulFunction<Op>::apply(args...);
  }
};

TORCH_LIBRARY_IMPL(spmm, Autograd, m) {
  m.impl("sparse24_mm", &AutogradKernel<Sparse24Mm>::call);
  m.impl("tiled_csl_mm", &AutogradKernel<TiledCslMm>::call);
  m.impl("spense_mm", &AutogradKernel<SpenseMm>::call);
}

}  // namespace
}  // namespace spmm::ops
