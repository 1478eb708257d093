// The smooth loss of every class at once, on the CPU: probability targets and label smoothing.
//
// smoothtopk::cpu_every_class(scores (M, C), beta (M, C), k, tau, alpha, alpha_per_class?,
// with_grad) -> (out (M,), grad (M, C) or (0,)) computes per row out_i = sum_c beta_ic L(s_i, c)
// and, with with_grad, its gradient d out_i / d s_i (the backward multiplies it by the incoming
// gradient of each row: the gradient is formed in the forward, one pass, as cross-entropy keeps
// its softmax). Schema and fake kernel: smoothtopk/backends/_abi.py.
//
// Per row (the algorithm of smoothtopk/backends/every_class.py, docs/algorithm.md): T the k
// largest scores, a their smallest, w_i = e^{(a - s_i)/(k tau)} <= 1 on T, u_j = e^{(s_j - a)/(k
// tau)} <= 1 on the rest R, e_b = e_b(u) by the subtraction-free recursion (float64; the Python
// side sends only rows with k log(2n) <= 700, where nothing overflows). Then
//   z_c = alpha_c + (a - s_c)/k + tau log(A_c / B_c),  L = tau softplus(z_c / tau), with
//   c in R: A_c = sum_m (-u_c)^m A_m, B_c = sum_m (-u_c)^m B_m (Horner in u_c <= 1),
//           A_m = sum_{b>=m} sigma_b(w) e_{b-m},  B_m = sum_{b>m} sigma_b(w) e_{b-1-m};
//   c in T: A_c = sum_{b<k} sigma_b(w\c) e_{b+1},  B_c = sum_{b<k} sigma_b(w\c) e_b.
// The gradient is reverse mode through exactly these steps (the anchor a is a constant: the
// value does not depend on it), with g_c = beta_c sigmoid(z_c / tau):
//   d/ds_c += -g_c / k for every c; lambda^A_c = tau g_c / A_c, lambda^B_c = tau g_c / B_c;
//   the adjoints of A_m, B_m, e_b and sigma_b(w) are per-row vectors of k + 1 numbers, and a
//   class of R gets u_c scale (explicit Horner derivative + sum_r (-u_c)^r F_r), a class of T
//   -w_c scale (adjoint of w_c through sigma(w) and the leave-one-out recursions).
// Every pass over the classes is a loop over arrays without branches (exp, log1p and Horner's
// rule written for the vectoriser, vector_math.h; sums in 8 lanes); the k anchors and the rare
// classes whose e^{z/tau} leaves the double range are then redone one by one.
// Edge rules as the class-index loss, class by class: NaN or +inf in a row -> NaN (loss and
// gradient); at most k finite scores -> finite classes 0, -inf classes +inf (exactly k finite)
// or NaN, gradient 0; a -inf class of a live row has loss +inf and gradient -beta_c / k.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "vector_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace every_class {

using vector_math::exp_nonpositive;
using vector_math::kExpFloor;
using vector_math::log1p_nonnegative;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kBig = 1e300;  // e^{z/tau} beyond this: z itself is used

struct Options {
  int64_t k;
  double tau, scale, alpha;
  const double* alpha_per_class;  // nullptr: alpha for every class
  bool with_grad;
  const double* exp_alpha;  // e^{alpha_c / tau} for every class
};

// Per-thread buffers, sized once per row length: arrays over the classes, then per-row ones.
struct Scratch {
  std::vector<double> s, beta, u, a_val, b_val, loss, share, lambda_a, lambda_b, power, grad;
  std::vector<int64_t> anchors;    // T, the k largest scores' classes
  std::vector<int64_t> anchor_of;  // position in T, or -1
  std::vector<double> w, sigma, without, states;  // without: k x k; states: k x k x (k + 1)
  void resize(int64_t classes, int64_t k) {
    for (auto* v : {&s, &beta, &u, &a_val, &b_val, &loss, &share, &lambda_a, &lambda_b, &power,
                    &grad})
      v->assign(classes, 0.0);
    anchors.assign(k, 0);
    anchor_of.assign(classes, -1);
    w.assign(k, 0.0);
    sigma.assign(k + 1, 0.0);
    without.assign(k * k, 0.0);
    states.assign(k * k * (k + 1), 0.0);
  }
};

// sum_j a_j b_j in 8 lanes (vectorised; a fixed order, whatever the threads).
double dot(const double* a, const double* b, int64_t n) {
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += a[j + l] * b[j + l];
  double tail = 0.0;
  for (; j < n; ++j) tail += a[j] * b[j];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
         ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7])) + tail;
}

// out_c = sum_m coef_m (-v_c)^m for every class: Horner's rule, one pass per degree.
void horner(const double* coef, int64_t degree, const double* __restrict v, int64_t n,
            double* __restrict out) {
  for (int64_t c = 0; c < n; ++c) out[c] = coef[degree];
  for (int64_t m = degree - 1; m >= 0; --m) {
    const double next = coef[m];
    for (int64_t c = 0; c < n; ++c) out[c] = next - v[c] * out[c];
  }
}

// The k largest scores' classes (ties: the lower class first), by insertion into a sorted list.
void top_k(const double* s, int64_t classes, int64_t k, int64_t* anchors) {
  int64_t count = 0;
  for (int64_t j = 0; j < classes; ++j) {
    if (count == k && !(s[j] > s[anchors[k - 1]])) continue;
    int64_t at = count < k ? count++ : k - 1;
    while (at > 0 && s[j] > s[anchors[at - 1]]) {
      anchors[at] = anchors[at - 1];
      --at;
    }
    anchors[at] = j;
  }
}

// sigma_0..sigma_n of w (n values) by the recursion, skipping position `skip`; with `states`,
// the state before each step (for the reverse pass): states[t * (n + 1) + d].
void elementary(const double* w, int64_t n, int64_t skip, double* sigma, double* states) {
  std::fill(sigma, sigma + n + 1, 0.0);
  sigma[0] = 1.0;
  int64_t t = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i == skip) continue;
    if (states != nullptr) std::copy(sigma, sigma + n + 1, states + (t++) * (n + 1));
    for (int64_t d = n; d >= 1; --d) sigma[d] += w[i] * sigma[d - 1];
  }
}

// The coefficients of d/dv sum_m c_m (-v)^m = sum_m (-(m + 1) c_{m+1}) (-v)^m.
std::vector<double> derivative(const std::vector<double>& c) {
  std::vector<double> out(c.size() > 1 ? c.size() - 1 : 1, 0.0);
  for (size_t m = 0; m + 1 < c.size(); ++m) out[m] = -static_cast<double>(m + 1) * c[m + 1];
  return out;
}

double softplus(double z, double tau) {  // tau log(1 + e^{z / tau}), exact at +-inf
  if (z == kInf) return kInf;
  if (z == -kInf) return 0.0;
  return std::max(z, 0.0) + tau * std::log1p(std::exp(-std::fabs(z) / tau));
}

double sigmoid(double x) {
  return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
}

struct Row {
  Scratch& ws;
  const Options& o;
  int64_t classes;
  double anchor = 0.0;
  std::vector<double> e, a_coef, b_coef;  // e_0..e_k, A_0..A_k, B_0..B_{k-1}
};

// e_0..e_k of u by the recursion e_d += u_j e_{d-1} in 8 interleaved lanes (class j in lane
// j mod 8; one vector per degree, no dependency from one class to the next), then the lane
// polynomials multiplied, truncated at degree k: non-negative terms only.
void rest_polynomial(const double* __restrict u, int64_t n, int64_t k, std::vector<double>& e) {
  constexpr int kLanes = 8;
  std::vector<double> lanes((k + 1) * kLanes, 0.0);  // lanes[d * 8 + l]
  std::fill(lanes.begin(), lanes.begin() + kLanes, 1.0);
  double* __restrict p = lanes.data();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t d = k; d >= 1; --d)
      for (int l = 0; l < kLanes; ++l) p[d * kLanes + l] += u[j + l] * p[(d - 1) * kLanes + l];
  for (; j < n; ++j)
    for (int64_t d = k; d >= 1; --d) p[d * kLanes] += u[j] * p[(d - 1) * kLanes];
  e.assign(k + 1, 0.0);
  e[0] = 1.0;
  std::vector<double> product(k + 1);
  for (int l = 0; l < kLanes; ++l) {
    for (int64_t d = 0; d <= k; ++d) {
      double sum = 0.0;
      for (int64_t i = 0; i <= d; ++i) sum += e[i] * p[(d - i) * kLanes + l];
      product[d] = sum;
    }
    e.swap(product);
  }
}

// Steps 1-2: anchors, u, w, e_b(u), sigma_b(w), leave-one-out sigma_b(w\c) and A_m, B_m.
void prepare(Row& r) {
  auto& ws = r.ws;
  const int64_t k = r.o.k, n = r.classes;
  top_k(ws.s.data(), n, k, ws.anchors.data());
  r.anchor = ws.s[ws.anchors[k - 1]];
  const double anchor = r.anchor, scale = r.o.scale;
  const double* __restrict s = ws.s.data();
  double* __restrict u = ws.u.data();
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {  // anchors (x >= 0) are zeroed below
    const double x = (s[j] - anchor) * scale;
    u[j] = exp_nonpositive(x < 0.0 ? x : 0.0);
  }
  for (int64_t i = 0; i < k; ++i) {
    ws.anchor_of[ws.anchors[i]] = i;
    ws.u[ws.anchors[i]] = 0.0;
    ws.w[i] = std::exp((anchor - ws.s[ws.anchors[i]]) * scale);
  }
  rest_polynomial(ws.u.data(), n, k, r.e);
  elementary(ws.w.data(), k, -1, ws.sigma.data(), nullptr);
  std::vector<double> full(k + 1);
  for (int64_t i = 0; i < k; ++i) {
    elementary(ws.w.data(), k, i, full.data(), ws.states.data() + i * k * (k + 1));
    std::copy(full.begin(), full.begin() + k, ws.without.begin() + i * k);
  }
  r.a_coef.assign(k + 1, 0.0);
  r.b_coef.assign(k, 0.0);
  for (int64_t m = 0; m <= k; ++m) {
    for (int64_t b = m; b <= k; ++b) r.a_coef[m] += ws.sigma[b] * r.e[b - m];
    if (m < k)
      for (int64_t b = m + 1; b <= k; ++b) r.b_coef[m] += ws.sigma[b] * r.e[b - 1 - m];
  }
}

// One class's loss and share (sigmoid(z / tau)) from A_c, B_c and e^{(a - s_c)/(k tau)}.
void one_class(Row& r, int64_t c, double a_value, double b_value, double shift) {
  auto& ws = r.ws;
  const double tau = r.o.tau;
  const double ratio = r.o.exp_alpha[c] * shift * (a_value / b_value);
  ws.a_val[c] = a_value;
  ws.b_val[c] = b_value;
  if (ratio < kBig) {
    ws.loss[c] = tau * log1p_nonnegative(ratio);
    ws.share[c] = ratio / (1.0 + ratio);
    return;
  }  // e^{z/tau} beyond the double range (tiny tau, a -inf class): z itself
  const double alpha = r.o.alpha_per_class ? r.o.alpha_per_class[c] : r.o.alpha;
  const double log_ratio = a_value > 0.0 ? std::log(a_value / b_value) : -kInf;
  const double z = alpha + (r.anchor - ws.s[c]) / static_cast<double>(r.o.k) + tau * log_ratio;
  ws.loss[c] = softplus(z, tau);
  ws.share[c] = z == -kInf ? 0.0 : sigmoid(z / tau);
}

// Step 3: every class's loss (and, with gradients, the lambdas). Returns sum_c beta_c L_c.
double losses(Row& r) {
  auto& ws = r.ws;
  const int64_t k = r.o.k, n = r.classes;
  const double tau = r.o.tau;
  double* a_val = ws.a_val.data();
  double* b_val = ws.b_val.data();
  horner(r.a_coef.data(), k, ws.u.data(), n, a_val);
  horner(r.b_coef.data(), k - 1, ws.u.data(), n, b_val);
  const double* __restrict u = ws.u.data();
  const double* __restrict exp_alpha = r.o.exp_alpha;
  double* __restrict loss = ws.loss.data();
  double* __restrict share = ws.share.data();
  double* __restrict ratios = ws.power.data();  // free until the gradient
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {  // the rest; u_c = 0 (anchors, -inf) gives +inf, redone
    const double ratio = exp_alpha[c] * (a_val[c] / b_val[c]) / u[c];
    const double usable = ratio < kBig ? ratio : 0.0;
    ratios[c] = ratio;
    loss[c] = tau * log1p_nonnegative(usable);
    share[c] = usable / (1.0 + usable);
  }
  for (int64_t c = 0; c < n; ++c) {
    const int64_t i = ws.anchor_of[c];
    if (i >= 0) {
      double a_value = 0.0, b_value = 0.0;
      for (int64_t b = 0; b < k; ++b) {
        a_value += ws.without[i * k + b] * r.e[b + 1];
        b_value += ws.without[i * k + b] * r.e[b];
      }
      one_class(r, c, a_value, b_value, ws.w[i]);
    } else if (!(ratios[c] < kBig)) {  // u_c = 0 or e^{z/tau} out of range (NaN included)
      one_class(r, c, a_val[c], b_val[c], 1.0 / ws.u[c]);
    }
  }
  if (r.o.with_grad) {
    const double* __restrict beta = ws.beta.data();
    double* __restrict lambda_a = ws.lambda_a.data();
    double* __restrict lambda_b = ws.lambda_b.data();
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      const double g = beta[c] * share[c];
      lambda_a[c] = g == 0.0 ? 0.0 : tau * g / a_val[c];
      lambda_b[c] = g == 0.0 ? 0.0 : tau * g / b_val[c];
      share[c] = g;  // from here on: g_c
    }
  }
  return dot(ws.beta.data(), ws.loss.data(), n);
}

// The adjoints of the anchors' w from those of sigma(w) (d sigma_b / d w_i = sigma_{b-1}(w\i))
// and of each sigma(w\i), reverse mode through its recursion (the states saved by prepare).
void anchor_adjoints(Row& r, const std::vector<double>& sigma_bar,
                     const std::vector<double>& without_bar, std::vector<double>& w_bar) {
  auto& ws = r.ws;
  const int64_t k = r.o.k;
  std::vector<double> bar(k + 2, 0.0);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t b = 1; b <= k; ++b) w_bar[i] += sigma_bar[b] * ws.without[i * k + b - 1];
    std::fill(bar.begin(), bar.end(), 0.0);
    std::copy(without_bar.begin() + i * k, without_bar.begin() + (i + 1) * k, bar.begin());
    int64_t t = k - 2;  // the steps over the anchors other than i, in reverse
    for (int64_t l = k - 1; l >= 0; --l) {
      if (l == i) continue;
      const double* old = ws.states.data() + (i * k + t--) * (k + 1);
      for (int64_t d = 1; d <= k; ++d) w_bar[l] += bar[d] * old[d - 1];
      for (int64_t d = 0; d <= k; ++d) bar[d] += ws.w[l] * bar[d + 1];
    }
  }
}

// The rest's gradient, every class (anchors are overwritten by the caller): -g_c / k + u_c scale
// (sum_r (-u_c)^r F_r + lambda^A_c dA_c/du_c - lambda^B_c dB_c/du_c), F_r = sum_d e_bar_d
// e_{d-1-r}: the adjoint of u_c through e(u), and through the Horner forms of A_c, B_c.
void rest_gradient(Row& r, const std::vector<double>& e_bar) {
  auto& ws = r.ws;
  const int64_t k = r.o.k, n = r.classes;
  std::vector<double> f(k, 0.0);
  for (int64_t q = 0; q < k; ++q)
    for (int64_t d = q + 1; d <= k; ++d) f[q] += e_bar[d] * r.e[d - 1 - q];
  double* through_e = ws.a_val.data();  // the forward's A_c, B_c are no longer needed
  double* slope_a = ws.b_val.data();
  double* slope_b = ws.power.data();
  horner(f.data(), k - 1, ws.u.data(), n, through_e);
  horner(derivative(r.a_coef).data(), k - 1, ws.u.data(), n, slope_a);
  if (k > 1) horner(derivative(r.b_coef).data(), k - 2, ws.u.data(), n, slope_b);
  else std::fill(slope_b, slope_b + n, 0.0);
  const double inverse_k = 1.0 / static_cast<double>(k), scale = r.o.scale;
  const double* __restrict lambda_a = ws.lambda_a.data();
  const double* __restrict lambda_b = ws.lambda_b.data();
  const double* __restrict g = ws.share.data();
  const double* __restrict u = ws.u.data();
  double* __restrict grad = ws.grad.data();
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const double u_bar = through_e[c] + lambda_a[c] * slope_a[c] - lambda_b[c] * slope_b[c];
    grad[c] = -g[c] * inverse_k + u_bar * u[c] * scale;
  }
}

// Step 4: the gradient of sum_c beta_c L_c into ws.grad (ws.share holds g_c).
void gradient(Row& r) {
  auto& ws = r.ws;
  const int64_t k = r.o.k, n = r.classes;
  std::vector<double> a_bar(k + 1, 0.0), b_bar(k, 0.0), e_bar(k + 1, 0.0), sigma_bar(k + 1, 0.0);
  std::vector<double> without_bar(k * k, 0.0), w_bar(k, 0.0);
  for (int64_t i = 0; i < k; ++i) {  // anchors: through sigma(w\c) and e; then out of the rest's
    const int64_t c = ws.anchors[i];
    for (int64_t b = 0; b < k; ++b) {
      e_bar[b + 1] += ws.lambda_a[c] * ws.without[i * k + b];
      e_bar[b] -= ws.lambda_b[c] * ws.without[i * k + b];
      without_bar[i * k + b] += ws.lambda_a[c] * r.e[b + 1] - ws.lambda_b[c] * r.e[b];
    }
    ws.lambda_a[c] = ws.lambda_b[c] = 0.0;
  }
  double* __restrict power = ws.power.data();  // (-u_c)^m: the adjoints of A_m, B_m
  const double* __restrict u = ws.u.data();
  std::fill(power, power + n, 1.0);
  for (int64_t m = 0; m <= k; ++m) {  // one pass per degree
    a_bar[m] = dot(ws.lambda_a.data(), power, n);
    if (m < k) b_bar[m] = -dot(ws.lambda_b.data(), power, n);
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) power[c] *= -u[c];
  }
  for (int64_t m = 0; m <= k; ++m) {  // A_m = sum_b sigma_b e_{b-m}, B_m = sum sigma_b e_{b-1-m}
    for (int64_t b = m; b <= k; ++b) {
      sigma_bar[b] += a_bar[m] * r.e[b - m];
      e_bar[b - m] += a_bar[m] * ws.sigma[b];
    }
    if (m < k)
      for (int64_t b = m + 1; b <= k; ++b) {
        sigma_bar[b] += b_bar[m] * r.e[b - 1 - m];
        e_bar[b - 1 - m] += b_bar[m] * ws.sigma[b];
      }
  }
  anchor_adjoints(r, sigma_bar, without_bar, w_bar);
  rest_gradient(r, e_bar);
  const double inverse_k = 1.0 / static_cast<double>(k);
  for (int64_t i = 0; i < k; ++i) {
    const int64_t c = ws.anchors[i];
    ws.grad[c] = -ws.share[c] * inverse_k - w_bar[i] * ws.w[i] * r.o.scale;
  }
}

// NaN or +inf anywhere -> NaN; at most k finite -> the limits; else the loss (and gradient).
template <typename scalar_t, typename beta_t>
double every_class_row(const scalar_t* s_in, const beta_t* beta_in, int64_t classes,
                       const Options& o, Scratch& ws, scalar_t* grad_out) {
  int64_t finite = 0;
  bool poisoned = false;
  for (int64_t j = 0; j < classes; ++j) {
    const double v = static_cast<double>(static_cast<float>(s_in[j]));
    ws.s[j] = std::is_same_v<scalar_t, double> ? static_cast<double>(s_in[j]) : v;
    ws.beta[j] = static_cast<double>(beta_in[j]);
    finite += std::isfinite(ws.s[j]);
    poisoned |= std::isnan(ws.s[j]) || ws.s[j] == kInf;
  }
  if (poisoned || finite <= o.k) {
    double total = 0.0;
    for (int64_t j = 0; j < classes; ++j) {
      const double l = std::isfinite(ws.s[j]) ? 0.0 : (finite == o.k ? kInf : kNaN);
      total += ws.beta[j] * l;
      if (grad_out != nullptr) grad_out[j] = static_cast<scalar_t>(poisoned ? kNaN : 0.0);
    }
    return poisoned ? kNaN : total;
  }
  Row r{ws, o, classes};
  prepare(r);
  const double total = losses(r);
  if (grad_out != nullptr) {
    gradient(r);
    for (int64_t j = 0; j < classes; ++j) grad_out[j] = static_cast<scalar_t>(ws.grad[j]);
  }
  for (int64_t i = 0; i < o.k; ++i) ws.anchor_of[ws.anchors[i]] = -1;
  return total;
}

template <typename score_t, typename beta_t>
void run_rows(const at::Tensor& scores, const at::Tensor& beta, at::Tensor& grad,
              const Options& o, std::vector<double>& totals) {
  const int64_t rows = scores.size(0), classes = scores.size(1);
  const score_t* s = scores.data_ptr<score_t>();
  const beta_t* b = beta.data_ptr<beta_t>();
  score_t* g = o.with_grad ? grad.data_ptr<score_t>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(classes * o.k, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    Scratch ws;
    ws.resize(classes, o.k);
    for (int64_t i = begin; i < end; ++i) {
      totals[i] = every_class_row(s + i * classes, b + i * classes, classes, o, ws,
                                  g == nullptr ? nullptr : g + i * classes);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> cpu_every_class(const at::Tensor& scores_in,
                                                   const at::Tensor& beta_in, int64_t k,
                                                   double tau, double alpha,
                                                   const std::optional<at::Tensor>& margins,
                                                   bool with_grad) {
  TORCH_CHECK(scores_in.dim() == 2 && beta_in.sizes() == scores_in.sizes(),
              "smoothtopk: scores and beta must be (rows, classes)");
  TORCH_CHECK(k >= 1 && k < scores_in.size(1), "smoothtopk: need 1 <= k < classes");
  const auto scores = scores_in.contiguous();
  const auto beta = beta_in.contiguous();
  const int64_t rows = scores.size(0), classes = scores.size(1);
  const auto out_type = scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto out = at::empty({rows}, scores.options().dtype(out_type));
  auto grad = with_grad ? at::empty_like(scores) : at::empty({0}, scores.options());
  at::Tensor margin_values;
  if (margins.has_value()) margin_values = margins->to(at::kDouble).contiguous();
  const double* per_class = margins.has_value() ? margin_values.data_ptr<double>() : nullptr;
  std::vector<double> exp_alpha(classes);
  for (int64_t c = 0; c < classes; ++c)
    exp_alpha[c] = std::exp((per_class ? per_class[c] : alpha) / tau);
  const Options o{k, tau, 1.0 / (static_cast<double>(k) * tau), alpha, per_class, with_grad,
                  exp_alpha.data()};
  std::vector<double> totals(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "every_class",
                                  [&] {
    using score_t = scalar_t;
    if (beta.scalar_type() == at::kDouble) {
      run_rows<score_t, double>(scores, beta, grad, o, totals);
    } else {
      TORCH_CHECK(beta.scalar_type() == at::kFloat, "smoothtopk: beta must be float32 or float64");
      run_rows<score_t, float>(scores, beta, grad, o, totals);
    }
  });
  for (int64_t i = 0; i < rows; ++i) {
    if (out_type == at::kDouble) out.data_ptr<double>()[i] = totals[i];
    else out.data_ptr<float>()[i] = static_cast<float>(totals[i]);
  }
  return std::make_tuple(out, grad);
}

}  // namespace every_class

TORCH_LIBRARY_IMPL(smoothtopk, CPU, m) {
  m.impl("cpu_every_class", TORCH_FN(every_class::cpu_every_class));
}
