// smoothtopk::cpu_loss: the fused CPU kernel's forward and backward as one differentiable
// operator, with its autograd formula in C++ (issue #20).
//
// An eager call through a Python autograd.Function pays Python twice per step (its apply in the
// forward, its backward node in the engine); cross-entropy pays neither. This operator's
// Autograd kernel is a torch::autograd::Function that calls smoothtopk::cpu_forward through the
// dispatcher, saves the scores, the targets and the kernel's O(M k) factors, and in the
// backward calls smoothtopk::cpu_backward; under create_graph (grad mode on in the backward) it
// calls smoothtopk::recorded_backward instead, the PyTorch path's recomputation with recorded
// operations (a Python CompositeImplicitAutograd kernel), so double backward stays exact.
// Below autograd (inference mode) the CPU kernel computes the value alone.
//
//     cpu_loss(scores, target, weight?, ignore_index, k, tau, alpha, reduction,
//              alpha_per_class?) -> Tensor         (the value of cpu_forward, differentiable)
//
// The schemas and fake kernels are defined from Python (smoothtopk/backends/_abi.py).

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/string_view.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, int64_t,
    double, double, c10::string_view, const std::optional<at::Tensor>&);
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                     double, c10::string_view);
using RecordedSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&, int64_t, int64_t, double,
                                     double, c10::string_view, const std::optional<at::Tensor>&);

template <typename Signature>
c10::TypedOperatorHandle<Signature> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

std::optional<at::Tensor> present(const at::Tensor& tensor) {
  return tensor.defined() ? std::optional<at::Tensor>(tensor) : std::nullopt;
}

class SmoothTopkLoss : public torch::autograd::Function<SmoothTopkLoss> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& scores,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            int64_t ignore_index, int64_t k, double tau, double alpha,
                            c10::string_view reduction,
                            const std::optional<at::Tensor>& alpha_per_class) {
    static const auto op = handle<ForwardSignature>("smoothtopk::cpu_forward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // straight to the CPU kernel
    auto [out, stats, anchor_index] = op.call(scores, target, weight, ignore_index, k, tau,
                                              alpha, reduction, alpha_per_class);
    ctx->save_for_backward({scores, target, stats, anchor_index, weight.value_or(at::Tensor()),
                            alpha_per_class.value_or(at::Tensor())});
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["k"] = k;
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["reduction"] = std::string(reduction);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(9);
    const at::Tensor& grad_out = grads[0];
    if (!grad_out.defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    const int64_t ignore_index = ctx->saved_data["ignore_index"].toInt();
    const int64_t k = ctx->saved_data["k"].toInt();
    const double tau = ctx->saved_data["tau"].toDouble();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    if (at::GradMode::is_enabled()) {  // create_graph: a gradient that is itself differentiable
      static const auto op = handle<RecordedSignature>("smoothtopk::recorded_backward");
      result[0] = op.call(grad_out, saved[0], saved[1], present(saved[4]), ignore_index, k, tau,
                          ctx->saved_data["alpha"].toDouble(), reduction, present(saved[5]));
    } else {
      static const auto op = handle<BackwardSignature>("smoothtopk::cpu_backward");
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      result[0] = op.call(grad_out, saved[0], saved[1], saved[2], saved[3], ignore_index, k, tau,
                          reduction);
    }
    return result;
  }
};

at::Tensor loss_autograd(const at::Tensor& scores, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight, int64_t ignore_index, int64_t k,
                         double tau, double alpha, c10::string_view reduction,
                         const std::optional<at::Tensor>& alpha_per_class) {
  return SmoothTopkLoss::apply(scores, target, weight, ignore_index, k, tau, alpha, reduction,
                               alpha_per_class);
}

at::Tensor loss_value(const at::Tensor& scores, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight, int64_t ignore_index, int64_t k,
                      double tau, double alpha, c10::string_view reduction,
                      const std::optional<at::Tensor>& alpha_per_class) {
  static const auto op = handle<ForwardSignature>("smoothtopk::cpu_forward");
  return std::get<0>(
      op.call(scores, target, weight, ignore_index, k, tau, alpha, reduction, alpha_per_class));
}

}  // namespace

TORCH_LIBRARY_IMPL(smoothtopk, Autograd, m) { m.impl("cpu_loss", TORCH_FN(loss_autograd)); }
TORCH_LIBRARY_IMPL(smoothtopk, CPU, m) { m.impl("cpu_loss", TORCH_FN(loss_value)); }
