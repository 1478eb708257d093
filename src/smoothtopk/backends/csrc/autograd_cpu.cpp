// smoothtopk::cpu_loss: the fused CPU kernel's forward and backward as one differentiable
// operator, with its autograd formula in C++ (issue #20).
//
// An eager call through a Python autograd.Function pays Python twice per step (its apply in the
// forward, its backward node in the engine); cross-entropy pays neither. This operator's
// Autograd kernel calls smoothtopk::cpu_forward below the Autograd key and, when the scores
// need a gradient, records one backward node, as torch's generated operators do (a
// torch::autograd::Function cost about 8 us more per step in its generic bookkeeping): the node
// saves the scores, the targets, the kernel's O(M k) factors and the rows' u_j (M x C, as
// cross-entropy saves its log-probabilities: the backward then forms no exponential) and calls
// smoothtopk::cpu_backward; under create_graph (grad mode on in the backward) it calls
// smoothtopk::recorded_backward instead, the PyTorch path's recomputation with recorded
// operations (a Python CompositeImplicitAutograd kernel), so double backward stays exact.
// Below autograd (inference mode) the CPU kernel computes the value alone.
//
//     cpu_loss(scores, target, weight?, ignore_index, k, tau, alpha, reduction,
//              alpha_per_class?) -> Tensor         (the value of cpu_forward, differentiable)
//
// The schemas and fake kernels are defined from Python (smoothtopk/backends/_abi.py).

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <c10/util/string_view.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// smooth_topk_cpu.cpp's forward that also keeps the rows' u_j, and the backward that reads them.
namespace smoothtopk_cpu {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_keeping_rest(
    const at::Tensor& scores, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, int64_t k, double tau, double alpha, c10::string_view reduction,
    const std::optional<at::Tensor>& alpha_per_class);
at::Tensor backward_from_rest(const at::Tensor& grad_out, const at::Tensor& scores,
                              const at::Tensor& target, const at::Tensor& stats,
                              const at::Tensor& anchor_index, const at::Tensor& rest,
                              int64_t ignore_index, int64_t k, double tau,
                              c10::string_view reduction);
}  // namespace smoothtopk_cpu

namespace {

// Whether the kernels may be called without the dispatcher: plain CPU tensors and no dispatch
// mode, which must see the operators.
bool direct(const at::Tensor& scores, const at::Tensor& target) {
  const auto plain = [](const at::Tensor& t) {
    return t.device().is_cpu() && !t.key_set().has(c10::DispatchKey::Python);
  };
  return plain(scores) && plain(target) && !c10::impl::dispatch_mode_enabled();
}

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

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The backward node of one cpu_loss call: dL/dscores from the saved factors.
struct SmoothTopkLossBackward : public torch::autograd::Node {
  // rest: the forward's u_j (undefined: formed again by cpu_backward)
  SavedVariable scores, target, stats, anchor_index, rest, weight, alpha_per_class;
  int64_t ignore_index = 0, k = 0;
  double tau = 0.0, alpha = 0.0;
  std::string reduction;

  std::string name() const override { return "SmoothTopkLossBackward"; }

  variable_list apply(variable_list&& grads) override {
    variable_list result(1);
    const at::Tensor& grad_out = grads[0];
    if (!grad_out.defined()) return result;
    if (at::GradMode::is_enabled()) {  // create_graph: a gradient that is itself differentiable
      static const auto op = handle<RecordedSignature>("smoothtopk::recorded_backward");
      result[0] = op.call(grad_out, scores.unpack(), target.unpack(), present(weight.unpack()),
                          ignore_index, k, tau, alpha, reduction,
                          present(alpha_per_class.unpack()));
    } else {
      static const auto op = handle<BackwardSignature>("smoothtopk::cpu_backward");
      // unpacked above autograd: an unpack hook may run Python that records a graph (the
      // recomputation of torch.utils.checkpoint does)
      const at::Tensor s = scores.unpack(), t = target.unpack(), st = stats.unpack();
      const at::Tensor anchors = anchor_index.unpack(), kept = rest.unpack();
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      if (kept.defined() && direct(s, t)) {
        result[0] = smoothtopk_cpu::backward_from_rest(grad_out, s, t, st, anchors, kept,
                                                       ignore_index, k, tau, reduction);
      } else {
        result[0] = op.call(grad_out, s, t, st, anchors, ignore_index, k, tau, reduction);
      }
    }
    return result;
  }

  void release_variables() override {
    for (SavedVariable* saved : {&scores, &target, &stats, &anchor_index, &rest, &weight,
                                 &alpha_per_class})
      saved->reset_data();
  }
};

// A new node, owned as this torch's autograd owns nodes: std::shared_ptr in torch 2.11 (the
// floor), c10::intrusive_ptr in later releases (2.14); told apart by Node's base class.
template <typename N>
auto make_node() {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, torch::autograd::Node>) {
    return c10::make_intrusive<N>();
  } else {
    return std::shared_ptr<N>(new N());
  }
}

at::Tensor loss_autograd(const at::Tensor& scores, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight, int64_t ignore_index, int64_t k,
                         double tau, double alpha, c10::string_view reduction,
                         const std::optional<at::Tensor>& alpha_per_class) {
  static const auto op = handle<ForwardSignature>("smoothtopk::cpu_forward");
  const bool differentiable = torch::autograd::compute_requires_grad(scores);
  at::Tensor out, stats, anchor_index, rest;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // straight to the CPU kernel
    if (differentiable && direct(scores, target)) {  // the backward reads the forward's u_j
      std::tie(out, stats, anchor_index, rest) = smoothtopk_cpu::forward_keeping_rest(
          scores, target, weight, ignore_index, k, tau, alpha, reduction, alpha_per_class);
    } else {
      std::tie(out, stats, anchor_index) = op.call(scores, target, weight, ignore_index, k, tau,
                                                   alpha, reduction, alpha_per_class);
    }
  }
  if (!differentiable) return out;
  auto node = make_node<SmoothTopkLossBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(scores));
  node->scores = SavedVariable(scores, false);
  node->target = SavedVariable(target, false);
  node->stats = SavedVariable(stats, false);
  node->anchor_index = SavedVariable(anchor_index, false);
  node->rest = SavedVariable(rest, false);
  node->weight = SavedVariable(weight.value_or(at::Tensor()), false);
  node->alpha_per_class = SavedVariable(alpha_per_class.value_or(at::Tensor()), false);
  node->ignore_index = ignore_index;
  node->k = k;
  node->tau = tau;
  node->alpha = alpha;
  node->reduction = std::string(reduction);
  torch::autograd::set_history(out, node);
  return out;
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
