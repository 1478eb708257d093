// smoothtopk::vector_math(x, function): the CPU kernels' branch-free functions of vector_math.h
// applied element by element, so that tests can measure their errors in ulps against an
// extended-precision reference (tests/test_vector_math.py) instead of only through the loss.
// Not part of the loss; the schema is defined in smoothtopk/backends/_abi.py.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "vector_math.h"

namespace {

using vector_math::exp_nonpositive;
using vector_math::log1p_nonnegative;
using vector_math::log_positive;

template <typename real, typename Fn>
void apply(const at::Tensor& x, at::Tensor& out, Fn fn) {
  const real* in = x.const_data_ptr<real>();
  real* result = out.mutable_data_ptr<real>();
  for (int64_t i = 0; i < x.numel(); ++i) result[i] = fn(in[i]);
}

at::Tensor vector_math_probe(const at::Tensor& x_in, c10::string_view function_view) {
  const std::string function(function_view.data(), function_view.size());
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kDouble || x_in.scalar_type() == at::kFloat,
                    "smoothtopk::vector_math: x must be float64 or float32");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const bool single = x.scalar_type() == at::kFloat;
  if (function == "exp_nonpositive") {
    if (single) {
      apply<float>(x, out, [](float v) { return exp_nonpositive(v); });
    } else {
      apply<double>(x, out, [](double v) { return exp_nonpositive(v); });
    }
  } else if (function == "log_positive" || function == "log1p_nonnegative") {
    TORCH_CHECK_VALUE(!single, "smoothtopk::vector_math: ", function, " takes float64");
    if (function == "log_positive") {
      apply<double>(x, out, [](double v) { return log_positive(v); });
    } else {
      apply<double>(x, out, [](double v) { return log1p_nonnegative(v); });
    }
  } else {
    TORCH_CHECK_VALUE(false, "smoothtopk::vector_math: unknown function ", function,
                      "; one of exp_nonpositive, log_positive, log1p_nonnegative");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(smoothtopk, CPU, m) { m.impl("vector_math", TORCH_FN(vector_math_probe)); }
