// Fused CPU kernel of the smooth top-k SVM loss: one pass over the scores per stage, float64 inside.
//
// Per row (scores s, target y, z = s / (k tau)), with T the k largest non-target scores, a their
// smallest, w_i = e^{(a - s_i)/(k tau)} <= 1 on T and u_j = e^{(s_j - a)/(k tau)} <= 1 on the
// rest R:
//
//     L = tau softplus(alpha / tau + (a - s_y) / (k tau) + log A - log B),
//     A = sum_{b=0..k} sigma_b(w) e_b(u),   B = sum_{b=1..k} sigma_b(w) e_{b-1}(u).
//
// Every term is a product of non-negative numbers, so A, B and the gradient factors below are
// computed without subtraction (docs/algorithm.md):
//   * e_b(u), b <= k: the recursion e_b += u_j e_{b-1} run in kLanes interleaved lanes (lane l
//     takes j = l mod kLanes, so the loop vectorises), then the lane polynomials are multiplied.
//     u_j <= 1 bounds e_b(u) by C(n, b): the Python side sends only rows with
//     k log(2n) <= 700, where nothing can overflow a double.
//   * the anchors' inclusions w_i d/dw_i log A by an inside-outside recursion over T (O(k^2)).
//   * the rest's gradient u_j sum_m (-u_j)^m D_m by Horner's rule (alternating terms bounded by
//     binomials in k because u_j <= 1), evaluated in float64.
// The backward recomputes u_j from the scores instead of storing an (N, C) buffer.
//
// The operators smoothtopk::cpu_forward / cpu_backward (schemas, fake kernels and the layout of
// stats defined in smoothtopk/backends/_abi.py) fold in the calling convention of
// F.cross_entropy: cpu_forward(scores, target, weight?, ignore_index, k, tau, alpha, reduction,
// alpha_per_class?) -> (out, stats, anchor_index) with out = weight[t] * L per row ("none"),
// their row-order sum ("sum") or that sum over the sum of weight[t] ("mean"); the margin of row r
// is alpha_per_class[t_r] when that (classes,) tensor is given, else alpha; rows whose target
// is ignore_index are never read and give 0 (and a zero gradient row). cpu_backward(grad_out, ...)
// scales each row by grad_out (scalar or per row) and the weight folded into stats.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include "vector_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kLanes = 8;
// The machine's vector width in bytes, for the loops written with vector types of that width
// (rank_keys, the backward's Horner sums): 64 with AVX-512, else 32 (GCC splits wider vector
// types, and lowered some of their operations to scalar code without AVX-512).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif
constexpr int64_t kPairRankLimit = 64;  // candidates ranked pair by pair (rank_keys)
// The lane bound of the top-k search for 8 < k < kBoundHeld (top_k_by_lane_bound): kBoundLanes
// lanes keep their kBoundDepth largest scores, kBoundHeld in all.
constexpr int64_t kBoundLanes = 16;
constexpr int kBoundDepth = 3;
constexpr int64_t kBoundHeld = kBoundLanes * kBoundDepth;
constexpr int64_t kChunk = 512;  // classes per block of the backward (two float64 buffers in L1)
using vector_math::bit_cast;
using vector_math::exp_nonpositive;
using vector_math::kExpFloor;
using vector_math::log1p_nonnegative;
using vector_math::log_positive;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();


template <typename scalar_t>
inline double to_double(scalar_t v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
inline double to_double<double>(double v) {
  return v;
}
// bfloat16 to float is a shift (vectorised); float16 rows are converted to float32 first
// (row_scores below).
template <>
inline double to_double<c10::BFloat16>(c10::BFloat16 v) {
  return static_cast<double>(bit_cast<float>(static_cast<uint32_t>(v.x) << 16));
}

void half_to_float(const c10::Half* in, float* out, int64_t count) {
  int64_t j = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; j + 8 <= count; j += 8) {
    const __m128i half8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + j));
    _mm256_storeu_ps(out + j, _mm256_cvtph_ps(half8));
  }
#endif
  for (; j < count; ++j) out[j] = static_cast<float>(in[j]);
}

void float_to_half(const float* in, c10::Half* out, int64_t count) {  // round to nearest even
  int64_t j = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; j + 8 <= count; j += 8) {
    const __m128i half8 = _mm256_cvtps_ph(_mm256_loadu_ps(in + j), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), half8);
  }
#endif
  for (; j < count; ++j) out[j] = c10::Half(in[j]);
}

// The precision in which scores are compared and exponentiated: float for float, half and
// bfloat16 scores (exactly representable), double for double. Sums and products are float64.
template <typename scalar_t>
using real_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Classes are searched in `groups` interleaved groups (class j in group j mod groups): the
// maxima of all groups take one vectorised pass over the row, then about G insertions of group
// maxima and (k + 1) n / G of classes: G ~ sqrt((k + 1) n), a multiple of 8, at most 4096.
int64_t group_count(int64_t classes, int64_t k) {
  const double balanced = std::sqrt(static_cast<double>(k + 1) * static_cast<double>(classes));
  const int64_t eighths = static_cast<int64_t>(balanced / 8.0 + 0.5);
  return 8 * std::clamp<int64_t>(std::min(eighths, classes / 8), 1, 512);
}

// Room for the classes of k + 9 groups: the candidates of the key selection (k > 8).
int64_t candidate_count(int64_t classes, int64_t k) {
  const int64_t groups = group_count(classes, k);
  return (k + 9) * ((classes + groups - 1) / groups);
}

// Room for merge_lanes's scratch: (k + 1) * kLanes doubles for the fixed-k products, or
// (any k) 4 + k + 1 + 3 doubles rounded up to whole vectors for each of the 4 lanes'
// polynomials and the 2 products (truncated_product's padding).
int64_t padded_degrees(int64_t k) { return (4 + k + 1 + 3 + 3) / 4 * 4; }
int64_t merge_scratch(int64_t k) { return std::max((k + 1) * kLanes, 6 * padded_degrees(k)); }

// Scratch space of one thread, sized once per call.
struct Workspace {
  explicit Workspace(int64_t classes, int64_t k)
      : rest(((classes + kLanes - 1) / kLanes) * kLanes, 0.0),
        group_max_float(group_count(classes, k)),
        group_max_double(group_count(classes, k)),
        history(k > 6 ? 2 * (((classes + kLanes - 1) / kLanes) * kLanes) : 0),
        lanes((k + 1) * kLanes),
        e(k + 1),
        product(merge_scratch(k)),
        top(k + 1),  // + 1: the selection by keys writes one slot past its last anchor
        top_index(k + 1),
        // only for k > 8 (the key selection): the group maxima, then the candidates of about
        // k + 1 groups (more, from ties, take the insertion search); small, so that the large
        // buffers above keep being reused by malloc instead of faulted in again every call
        candidate_capacity(k > 8 ? candidate_count(classes, k) : 0),
        // (+ 8: room to pad the candidates' keys to whole vectors, rank_keys)
        keys(std::max({candidate_capacity, k > 8 ? group_count(classes, k) : 0, kBoundHeld}) +
             8),
        candidates(candidate_capacity),
        ranks(k > 8 ? kPairRankLimit : 0) {}
  std::vector<double> rest;  // u_j, zero on T, on the target and in the padding
  std::vector<float> group_max_float;  // group maxima of the row (float, half, bfloat16 scores)
  std::vector<double> group_max_double;  // (double scores)
  std::vector<double> history;  // two rows of e_b histories (tiles of degrees, k > 6)
  std::vector<double> lanes, e, product, top;  // product: scratch of merge_lanes
  std::vector<int64_t> top_index;
  int64_t candidate_capacity;
  std::vector<uint64_t> keys;  // ordered keys (uint32 for float rows) of the group maxima, then
  std::vector<int64_t> candidates;  // of the candidate classes; those classes
  std::vector<int64_t> ranks;  // of at most kPairRankLimit candidates (rank_keys)
};

// The maximum of each group (NaN ignored).
template <typename scalar_t>
__attribute__((noinline)) void group_maxima(const scalar_t* __restrict s, int64_t classes,
                                            int64_t groups, real_t<scalar_t>* __restrict m) {
  using real = real_t<scalar_t>;
  for (int64_t g = 0; g < groups; ++g) m[g] = -std::numeric_limits<real>::infinity();
  int64_t start = 0;
  for (; start + groups <= classes; start += groups) {
    for (int64_t g = 0; g < groups; ++g) {
      const real v = static_cast<real>(to_double(s[start + g]));
      m[g] = v > m[g] ? v : m[g];
    }
  }
  for (int64_t g = 0; start + g < classes; ++g) {
    const real v = static_cast<real>(to_double(s[start + g]));
    m[g] = v > m[g] ? v : m[g];
  }
}

// Top-k for k = K <= 8 on rows of at most kLaneSearchClasses classes, without the branches of
// insertion (which dominated such rows):
//   1. 8 lanes (class j in lane j mod 8) keep their K largest values in a column of K vectors:
//      a block of 8 classes passes down the column, each level keeping the larger (max/min; a
//      NaN never enters, the target enters as -inf).
//   2. a, the K-th largest value, by merging the 8 sorted columns: lanes l and l + P/2 ... by
//      bitonic merges of columns padded to P = 1, 2, 4 or 8 rows (max of one column and the
//      other reversed holds the P largest of both, a half-cleaner network sorts it again).
//   3. the anchors: every class above a, then the first classes equal to a (class order).
// Returns false (nothing usable) when fewer than K non-NaN candidates exist; the general search
// takes such rows. The anchors come in class order, not sorted; a is returned.
#if defined(__clang__) ? __clang_major__ >= 13 : (defined(__GNUC__) && __GNUC__ >= 12)
#define SMOOTHTOPK_LANE_SEARCH 1
constexpr int64_t kLaneSearchClasses = 512;

template <typename real>
struct LaneVector;
template <>
struct LaneVector<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef int32_t mask __attribute__((vector_size(32)));  // what comparisons give
};
template <>
struct LaneVector<double> {
  typedef double type __attribute__((vector_size(64)));
  typedef int64_t mask __attribute__((vector_size(64)));
};

// Classes start .. start + 7 in the comparison precision, as one vector.
template <typename scalar_t, typename V = typename LaneVector<real_t<scalar_t>>::type>
inline V load_lanes(const scalar_t* p) {
  V x;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {  // float bits = bfloat16 bits << 16
    typedef uint16_t half_bits __attribute__((vector_size(16)));
    typedef uint32_t float_bits __attribute__((vector_size(32)));
    half_bits h;
    std::memcpy(&h, p, sizeof h);
    const float_bits f = __builtin_convertvector(h, float_bits) << 16;
    std::memcpy(&x, &f, sizeof x);
  } else {
    static_assert(sizeof(scalar_t) * 8 == sizeof(V), "float or double");
    std::memcpy(&x, p, sizeof x);
  }
  return x;
}

template <typename M>
inline bool any_lane(M m) {
#if defined(__AVX__)
  if constexpr (sizeof(M) == 32) return _mm256_movemask_ps(reinterpret_cast<__m256>(m)) != 0;
#endif
  uint64_t parts[sizeof(M) / 8];
  std::memcpy(parts, &m, sizeof m);
  uint64_t any = 0;
  for (uint64_t part : parts) any |= part;
  return any != 0;
}

// max_lanes(a, b) = b > a ? b : a (a when b is NaN), min_lanes(a, b) = b > a ? a : b (b when b
// is NaN: the NaN passes down and never stays): exactly the x86 max/min instructions, which
// GCC does not choose when both share one comparison (it blends twice on the mask instead).
template <typename V>
inline V max_lanes(V a, V b) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<V, LaneVector<float>::type>)
    return reinterpret_cast<V>(_mm256_max_ps(reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(a)));
#endif
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<V, LaneVector<double>::type>)
    return reinterpret_cast<V>(_mm512_max_pd(reinterpret_cast<__m512d>(b), reinterpret_cast<__m512d>(a)));
#endif
  return b > a ? b : a;
}
template <typename V>
inline V min_lanes(V a, V b) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<V, LaneVector<float>::type>)
    return reinterpret_cast<V>(_mm256_min_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b)));
#endif
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<V, LaneVector<double>::type>)
    return reinterpret_cast<V>(_mm512_min_pd(reinterpret_cast<__m512d>(a), reinterpret_cast<__m512d>(b)));
#endif
  return b > a ? a : b;
}

// Lane l and lane l ^ H (H = 4, 2, 1) of every row, for the merges.
template <int H, typename V>
inline V partner(V v) {
  if constexpr (H == 4) return __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
  if constexpr (H == 2) return __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
  if constexpr (H == 1) return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
}

// rows[0..P) sorted descending in every lane, merged with the same rows of lane l ^ H: the P
// largest of both, sorted descending again.
template <int P, int H, typename V>
__attribute__((always_inline)) inline void merge_columns(V* rows) {
  V merged[P];
  for (int i = 0; i < P; ++i) merged[i] = max_lanes(rows[i], partner<H>(rows[P - 1 - i]));
  for (int half = P / 2; half >= 1; half /= 2) {
    for (int i = 0; i < P; ++i) {
      if (i & half) continue;
      const V high = max_lanes(merged[i], merged[i + half]);
      const V low = min_lanes(merged[i + half], merged[i]);
      merged[i] = high;
      merged[i + half] = low;
    }
  }
  for (int i = 0; i < P; ++i) rows[i] = merged[i];
}

template <int K, typename scalar_t>
bool top_k_small(const scalar_t* __restrict s, int64_t classes, int64_t target, Workspace& ws,
                 double& anchor) {
  using real = real_t<scalar_t>;
  using V = typename LaneVector<real>::type;
  constexpr real kLow = -std::numeric_limits<real>::infinity();
  constexpr int P = K == 1 ? 1 : K == 2 ? 2 : K <= 4 ? 4 : 8;
  V column[P];
  for (int i = 0; i < P; ++i) column[i] = V{} + kLow;
  using M = typename LaneVector<real>::mask;
  using lane_t = std::remove_reference_t<decltype(M{}[0])>;
  M lane;
  for (int l = 0; l < 8; ++l) lane[l] = l;
  for (int64_t start = 0; start < classes; start += 8) {
    V x;
    if (start + 8 <= classes) {
      x = load_lanes(s + start);
    } else {  // the last, partial block: -inf fills
      real block[8];
      for (int l = 0; l < 8; ++l)
        block[l] = start + l < classes ? static_cast<real>(to_double(s[start + l])) : kLow;
      std::memcpy(&x, block, sizeof x);
    }
    x = lane == static_cast<lane_t>(target - start) ? V{} + kLow : x;  // no lane if far
#pragma GCC unroll 8
    for (int i = 0; i < K; ++i) {
      const V larger = max_lanes(column[i], x);
      x = min_lanes(column[i], x);
      column[i] = larger;
    }
  }
  merge_columns<P, 4>(column);
  merge_columns<P, 2>(column);
  merge_columns<P, 1>(column);
  const real a = column[K - 1][0];
  int64_t above = 0;  // anchors strictly above a
  for (int i = 0; i < K - 1; ++i) above += column[i][0] > a ? 1 : 0;
  int64_t equal_left = K - above;
  int64_t found = 0;
  const V low = V{} + a;
  for (int64_t start = 0; start < classes && found < K; start += 8) {
    const int64_t count = std::min<int64_t>(8, classes - start);
    if (count == 8 && !any_lane(load_lanes(s + start) >= low)) continue;
    for (int64_t l = 0; l < count && found < K; ++l) {
      const int64_t j = start + l;
      const real v = static_cast<real>(to_double(s[j]));
      if (j == target || !(v >= a)) continue;
      if (v == a) {
        if (equal_left == 0) continue;
        --equal_left;
      }
      ws.top[found] = static_cast<double>(v);
      ws.top_index[found] = j;
      ++found;
    }
  }
  anchor = static_cast<double>(a);
  return found == K;
}
#endif

// Order-preserving unsigned keys of float and double scores (-0 just below +0; NaN is never
// keyed), for the selection of the k-th largest of many candidates without sorting.
template <typename real>
using key_t = std::conditional_t<std::is_same_v<real, double>, uint64_t, uint32_t>;

template <typename real>
inline key_t<real> ordered_key(real v) {
  using U = key_t<real>;
  using S = std::make_signed_t<U>;
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  const U bits = bit_cast<U>(v);
  return bits ^ (static_cast<U>(static_cast<S>(bits) >> (8 * sizeof(U) - 1)) | sign);
}

template <typename real>
inline real key_value(key_t<real> key) {
  constexpr key_t<real> sign = key_t<real>(1) << (8 * sizeof(key_t<real>) - 1);
  return bit_cast<real>(key & sign ? key ^ sign : ~key);
}

// The rank-th largest of m keys (1 <= rank <= m), two bits at a time from the top: the largest
// T with at least rank keys >= T. Each step is one vectorised pass counting the keys at or above
// three thresholds; no branch depends on the data (one bit per pass took twice the passes, each
// ending in a horizontal sum on the critical path). With low_bit > 0 only the bits from low_bit
// up are searched: a lower bound of that key (its bits below low_bit zero), at most 2^low_bit
// keys below it.
template <typename U>
U kth_largest_key(const U* __restrict keys, int64_t m, int64_t rank, int low_bit = 0) {
  U result = 0;
  int bit = 8 * sizeof(U) - 1;
  for (; bit - 1 >= low_bit; bit -= 2) {
    const U one = result | (U(1) << (bit - 1)), two = result | (U(2) << (bit - 1)),
            three = result | (U(3) << (bit - 1));
    U at_one = 0, at_two = 0, at_three = 0;
    for (int64_t i = 0; i < m; ++i) {
      at_one += keys[i] >= one ? 1 : 0;
      at_two += keys[i] >= two ? 1 : 0;
      at_three += keys[i] >= three ? 1 : 0;
    }
    const int64_t r = rank;
    result = static_cast<int64_t>(at_three) >= r   ? three
             : static_cast<int64_t>(at_two) >= r   ? two
             : static_cast<int64_t>(at_one) >= r ? one
                                                   : result;
  }
  if (bit >= low_bit) {
    const U candidate = result | (U(1) << bit);
    U count = 0;
    for (int64_t i = 0; i < m; ++i) count += keys[i] >= candidate ? 1 : 0;
    result = static_cast<int64_t>(count) >= rank ? candidate : result;
  }
  return result;
}

// The rank of each of m keys (0 for the largest; ties by position, so the ranks are 0 .. m - 1),
// by comparing every pair: m^2 / L vector comparisons with no branch, fewer steps than the bit
// search for the few candidates of a row (m <= kPairRankLimit). keys[m ..] are overwritten
// with 0 (below every key of a score) up to a whole vector. The keys are compared as signed
// integers with their top bit flipped (the same order), in vectors of the machine's width:
// without AVX-512, GCC turned 64-byte vectors of unsigned comparisons into scalar code and
// stack traffic (this function then took a sixth of a k = 20 call).
template <typename U>
void rank_keys(U* __restrict keys, int64_t m, int64_t* __restrict rank) {
  using S = std::make_signed_t<U>;
  typedef U unsigned_vec __attribute__((vector_size(kVectorBytes)));
  typedef S vec __attribute__((vector_size(kVectorBytes)));
  constexpr int64_t L = kVectorBytes / sizeof(U);
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  const int64_t padded = (m + L - 1) / L * L;
  for (int64_t i = m; i < padded; ++i) keys[i] = 0;
  vec position;
  for (int64_t l = 0; l < L; ++l) position[l] = static_cast<S>(l);
  for (int64_t i = 0; i < m; ++i) {
    const S key = static_cast<S>(keys[i] ^ sign);
    vec count = {};
    for (int64_t start = 0; start < padded; start += L) {
      unsigned_vec bits;
      std::memcpy(&bits, keys + start, sizeof bits);
      const vec block = reinterpret_cast<vec>(bits ^ sign);
      const vec before = position + static_cast<S>(start) < static_cast<S>(i);
      count -= (block > key) | ((block == key) & before);  // each true lane is all ones: -1
    }
    S total = 0;
    for (int64_t l = 0; l < L; ++l) total += count[l];
    rank[i] = static_cast<int64_t>(total);
  }
}

// The k largest of m >= k candidates (their keys, classes) into ws.top / ws.top_index, in the
// candidates' order: their k-th largest a (returned), every key above a's, then the first
// equal to it. Pairwise ranks for a few candidates (m <= kPairRankLimit), else the bit search.
template <typename real>
double anchors_among(key_t<real>* __restrict keys, const int64_t* __restrict candidate,
                     int64_t m, int64_t k, Workspace& ws) {
  using U = key_t<real>;
  if (m <= kPairRankLimit) {
    int64_t* rank = ws.ranks.data();
    rank_keys(keys, m, rank);
    int64_t found = 0;
    U threshold = 0;
    for (int64_t i = 0; i < m; ++i) {
      threshold = rank[i] == k - 1 ? keys[i] : threshold;
      ws.top[found] = static_cast<double>(key_value<real>(keys[i]));
      ws.top_index[found] = candidate[i];
      found += rank[i] < k ? 1 : 0;
    }
    return static_cast<double>(key_value<real>(threshold));
  }
  const U threshold = kth_largest_key(keys, m, k);
  int64_t above = 0;
  for (int64_t i = 0; i < m; ++i) above += keys[i] > threshold ? 1 : 0;
  int64_t equal_left = k - above, found = 0;
  for (int64_t i = 0; i < m && found < k; ++i) {
    const bool equal = keys[i] == threshold;
    const bool take = keys[i] > threshold || (equal && equal_left > 0);
    equal_left -= equal && take ? 1 : 0;
    ws.top[found] = static_cast<double>(key_value<real>(keys[i]));
    ws.top_index[found] = candidate[i];
    found += take ? 1 : 0;
  }
  return static_cast<double>(key_value<real>(threshold));
}

#ifdef SMOOTHTOPK_LANE_SEARCH
// Top-k for 8 < k < kBoundHeld on float comparisons (float, bfloat16 and
// float16's staged float rows), in three vectorised passes and no branch per class:
//   1. a bound: kBoundLanes lanes (class j in lane j mod 16) keep their kBoundDepth largest
//      scores (top_k_small's network, two vectors of 8); the (k + 1)-th largest of those 48
//      (its key's top 16 bits: a lower bound within 2^-7) is at most the (k + 1)-th largest
//      score, so at least k scores other than the target's reach it, and few more do: a lane
//      loses only those of the row's k + 1 largest beyond its third (n = 1000, k = 20: about
//      25 candidates; the groups' bound took about as many, at 3x the cost);
//   2. the candidates: the classes at or above it, but the target (NaN never reaches it);
//   3. anchors_among.
// Returns false (nothing usable) for a bound of -inf (fewer than k + 1 finite scores) or more
// candidates than ws has room for (ties at the bound): the group search takes such rows.

template <typename M>
inline uint32_t lane_bits(M m) {
#if defined(__AVX__)
  if constexpr (sizeof(M) == 32) return _mm256_movemask_ps(reinterpret_cast<__m256>(m));
#endif
  uint32_t bits = 0;
  for (int l = 0; l < 8; ++l) bits |= (m[l] != 0 ? 1u : 0u) << l;
  return bits;
}

template <typename scalar_t>
inline LaneVector<float>::type lanes_or_low(const scalar_t* s, int64_t start, int64_t classes) {
  using V = LaneVector<float>::type;
  if (start + 8 <= classes) return load_lanes<scalar_t, V>(s + start);
  float block[8];
  for (int l = 0; l < 8; ++l)
    block[l] = start + l < classes ? static_cast<float>(to_double(s[start + l]))
                                   : -std::numeric_limits<float>::infinity();
  V x;
  std::memcpy(&x, block, sizeof x);
  return x;
}

template <typename scalar_t>
bool top_k_by_lane_bound(const scalar_t* s, int64_t classes, int64_t target, int64_t k,
                         Workspace& ws, double& anchor) {
  using V = LaneVector<float>::type;
  V column[2][kBoundDepth];
  for (auto& half : column)
    for (V& level : half) level = V{} - std::numeric_limits<float>::infinity();
  for (int64_t start = 0; start < classes; start += kBoundLanes) {
    V x[2] = {lanes_or_low(s, start, classes), lanes_or_low(s, start + 8, classes)};
    for (int h = 0; h < 2; ++h) {
      for (int i = 0; i < kBoundDepth; ++i) {
        const V larger = max_lanes(column[h][i], x[h]);
        x[h] = min_lanes(column[h][i], x[h]);
        column[h][i] = larger;
      }
    }
  }
  uint32_t* keys = reinterpret_cast<uint32_t*>(ws.keys.data());
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < kBoundDepth; ++i)
      for (int l = 0; l < 8; ++l) keys[(h * kBoundDepth + i) * 8 + l] = ordered_key(column[h][i][l]);
  const uint32_t bound = kth_largest_key(keys, kBoundHeld, k + 1, 16);
  if (bound <= ordered_key(-std::numeric_limits<float>::infinity())) return false;
  const V low = V{} + key_value<float>(bound);
  int64_t* candidate = ws.candidates.data();
  int64_t m = 0;
  for (int64_t start = 0; start < classes; start += 8) {
    if (m + 8 > ws.candidate_capacity) return false;
    uint32_t bits = lane_bits(lanes_or_low(s, start, classes) >= low);
    const uint64_t offset = static_cast<uint64_t>(target - start);  // the target's lane
    bits &= offset < 8 ? ~(1u << offset) : ~0u;
#if defined(__AVX512F__)
    // the lanes' classes compressed into place: no branch per block that holds one (a
    // mispredicted branch on about every candidate took a third of the search)
    const __m512i classes_here = _mm512_add_epi64(
        _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(start));
    _mm512_storeu_si512(candidate + m,
                        _mm512_maskz_compress_epi64(static_cast<__mmask8>(bits), classes_here));
    m += __builtin_popcount(bits);
#else
    while (bits != 0) {
      candidate[m++] = start + __builtin_ctz(bits);
      bits &= bits - 1;
    }
#endif
  }
  if (m < k) return false;
  for (int64_t i = 0; i < m; ++i)
    keys[i] = ordered_key(static_cast<float>(to_double(s[candidate[i]])));
  anchor = anchors_among<float>(keys, candidate, m, k, ws);
  return true;
}
#endif

// The k largest scores other than the target, in descending order. Only groups whose maximum
// reaches the (k + 1)-th largest group maximum can hold them: that value is at most the k-th
// largest non-target score, whichever group holds the target. Ties are broken by the order of
// the search (any choice gives the same loss and gradient). NaN scores never enter; the caller
// poisons such rows. K > 0: k = K known at compile time; the sorted arrays then live in
// registers and a value is inserted without branches (every slot takes its old value, the new
// one or its upper neighbour's: the same result as the insertion loop).
template <int K, typename scalar_t>
double top_k_without_target(const scalar_t* s, int64_t classes, int64_t target,
                            int64_t k_runtime, Workspace& ws) {
  const int64_t k = K > 0 ? K : k_runtime;
#ifdef SMOOTHTOPK_LANE_SEARCH
  if constexpr (K > 0 && K <= 8) {
    double anchor;
    if (classes <= kLaneSearchClasses && top_k_small<K>(s, classes, target, ws, anchor))
      return anchor;
  }
  if constexpr (K == 0 && !std::is_same_v<scalar_t, double>) {
    double anchor;
    if (k < kBoundHeld && top_k_by_lane_bound(s, classes, target, k, ws, anchor))
      return anchor;
  }
#endif
  const int64_t groups = group_count(classes, k);
  real_t<scalar_t>* maxima;
  if constexpr (std::is_same_v<scalar_t, double>) {
    maxima = ws.group_max_double.data();
  } else {
    maxima = ws.group_max_float.data();
  }
  group_maxima(s, classes, groups, maxima);
  // reach: the (k + 1)-th largest group maximum (-inf if fewer than k + 1 groups).
  double reach;
  if constexpr (K > 0) {
    double best[K + 1];
    for (int i = 0; i <= K; ++i) best[i] = -kInf;
    for (int64_t g = 0; g < groups; ++g) {
      const double v = static_cast<double>(maxima[g]);  // never NaN
      for (int i = K; i >= 1; --i) best[i] = std::max(best[i], std::min(v, best[i - 1]));
      best[0] = std::max(best[0], v);
    }
    reach = best[K];
  } else {  // by the keys' bits (insertion into k + 1 sorted values branches too much)
    using real = real_t<scalar_t>;
    key_t<real>* keys = reinterpret_cast<key_t<real>*>(ws.keys.data());
    for (int64_t g = 0; g < groups; ++g) keys[g] = ordered_key(maxima[g]);  // never NaN
    // the top 16 bits of the key suffice (a lower bound within 2^-7 of the value: a few more
    // candidates below); never below -inf's key, where a truncated key would be a NaN's
    using U = key_t<real>;
    const U bound = groups > k ? kth_largest_key(keys, groups, k + 1, 8 * sizeof(U) - 16) : 0;
    const U lowest = ordered_key(-std::numeric_limits<real>::infinity());
    reach = groups > k ? static_cast<double>(key_value<real>(std::max(bound, lowest))) : -kInf;
  }
  if constexpr (K > 0) {
    // -inf with index -1 marks an empty slot; a row that leaves one (fewer than K finite
    // candidates) is searched again by the general loop below, which also takes -inf scores.
    double top[K];
    int64_t index[K];
    for (int i = 0; i < K; ++i) top[i] = -kInf, index[i] = -1;
    for (int64_t g = 0; g < groups; ++g) {
      if (!(static_cast<double>(maxima[g]) >= reach)) continue;
      for (int64_t j = g; j < classes; j += groups) {
        const double v = to_double(s[j]);
        if (!(v > top[K - 1]) || j == target) continue;
        for (int i = K - 1; i >= 1; --i) {
          const bool shift = top[i - 1] < v, take = top[i] < v;
          top[i] = shift ? top[i - 1] : (take ? v : top[i]);
          index[i] = shift ? index[i - 1] : (take ? j : index[i]);
        }
        index[0] = top[0] < v ? j : index[0];
        top[0] = top[0] < v ? v : top[0];
      }
    }
    if (index[K - 1] >= 0) {
      for (int i = 0; i < K; ++i) ws.top[i] = top[i], ws.top_index[i] = index[i];
      return top[K - 1];
    }
  } else {
    // Any k: the candidates' keys (non-NaN, not the target, at least reach) in one buffer, a
    // their k-th largest, then the anchors in the buffer's order: every key above a's, then the
    // first equal to it (few candidates: those ranked below k). Fewer than k candidates: the
    // insertion loop below.
    using real = real_t<scalar_t>;
    using U = key_t<real>;
    U* keys = reinterpret_cast<U*>(ws.keys.data());
    int64_t* candidate = ws.candidates.data();
    const int64_t per_group = (classes + groups - 1) / groups;
    int64_t m = 0;
    bool room = true;
    for (int64_t g = 0; g < groups && room; ++g) {
      if (!(static_cast<double>(maxima[g]) >= reach)) continue;
      room = m + per_group <= ws.candidate_capacity;  // else (ties): the insertion search
      if (!room) break;
      for (int64_t j = g; j < classes; j += groups) {
        const real v = static_cast<real>(to_double(s[j]));
        keys[m] = ordered_key(v);
        candidate[m] = j;
        m += j != target && static_cast<double>(v) >= reach ? 1 : 0;  // NaN: false
      }
    }
    if (room && m >= k) return anchors_among<real>(keys, candidate, m, k, ws);
  }
  int64_t filled = 0;
  double threshold = -kInf;
  for (int64_t g = 0; g < groups; ++g) {
    if (!(static_cast<double>(maxima[g]) >= reach)) continue;
    for (int64_t j = g; j < classes; j += groups) {
      if (j == target) continue;
      const double v = to_double(s[j]);
      if (filled == k ? !(v > threshold) : (v != v)) continue;
      int64_t pos = filled < k ? filled++ : k - 1;
      while (pos > 0 && ws.top[pos - 1] < v) {
        ws.top[pos] = ws.top[pos - 1];
        ws.top_index[pos] = ws.top_index[pos - 1];
        --pos;
      }
      ws.top[pos] = v;
      ws.top_index[pos] = j;
      if (filled == k) threshold = ws.top[k - 1];
    }
  }
  return ws.top[k - 1];
}

// u_j = e^{min(s_j - a, 0) / (k tau)} for every j, and in kept (unless null) as formed, in
// real; returns 1 if a score is NaN or +inf, else 0 (-inf is a legitimate score: a class ruled
// out). The flag is an OR of 32-bit lanes, not a count (a 64-bit count cost a tenth of the loop
// in widening).
template <typename scalar_t, typename real>
__attribute__((noinline)) int64_t rest_weights(const scalar_t* __restrict s, double* __restrict u,
                                               int64_t classes, double a, double scale,
                                               real* __restrict kept) {
  const real anchor = static_cast<real>(a), factor = static_cast<real>(scale);
  const auto weight = [&](int64_t j, int32_t& bad) {
    const real v = static_cast<real>(to_double(s[j]));
    bad |= v <= std::numeric_limits<real>::max() ? 0 : 1;
    const real x = (v - anchor) * factor;  // NaN only for v == anchor with factor = inf: u = 1
    return exp_nonpositive(x < 0 ? x : real(0));
  };
  int32_t bad = 0;
  if (kept != nullptr) {
    for (int64_t j = 0; j < classes; ++j) {
      const real w = weight(j, bad);
      kept[j] = w;
      u[j] = static_cast<double>(w);
    }
  } else {
    for (int64_t j = 0; j < classes; ++j) u[j] = static_cast<double>(weight(j, bad));
  }
  return bad;
}

// e_b over the classes j = l mod kLanes, b = 0..k, in lanes[b * kLanes + l]: the recursion
// e_b += u_j e_{b-1} (b descending), on two 4-wide vectors (GCC vector extensions) so that two
// independent chains hide the latency of the fused multiply-add; in registers for k <= 6.
typedef double double4 __attribute__((vector_size(32)));
static_assert(kLanes == 8, "two double4 per degree");

inline double4 load4(const double* p) {
  double4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// An unaligned store of a vector held in registers: std::memcpy from its address would make
// GCC keep it in memory (degree_tile's top degree: a store and a reload on the critical path
// of every block, about 2x the recursion's time at k = 20).
typedef double double4u __attribute__((vector_size(32), aligned(8)));

inline void store4(double* p, double4 v) { *reinterpret_cast<double4u*>(p) = v; }

template <int K>
void lane_polynomials_fixed(const double* __restrict u, int64_t padded, double* __restrict lanes) {
  double4 low[K + 1], high[K + 1];
  for (int b = 0; b <= K; ++b) low[b] = high[b] = double4{} + (b == 0 ? 1.0 : 0.0);
  for (int64_t start = 0; start < padded; start += kLanes) {
    const double4 x = load4(u + start), y = load4(u + start + 4);
    for (int b = K; b >= 1; --b) {
      low[b] += x * low[b - 1];
      high[b] += y * high[b - 1];
    }
  }
  for (int b = 0; b <= K; ++b) {
    std::memcpy(lanes + b * kLanes, &low[b], sizeof(double4));
    std::memcpy(lanes + b * kLanes + 4, &high[b], sizeof(double4));
  }
}

// Degrees first .. first + T - 1 of 4 lanes: e_b += u_j e_{b-1}, with e_{first - 1} read from
// below (its value before each block; 1 if null) and, if keep is set, e_{first + T - 1} before
// each block written there. Results in out[t * kLanes + l].
template <int T>
void degree_tile(const double* __restrict u, int64_t padded, const double* __restrict below,
                 double* __restrict keep, double* __restrict out) {
  double4 e[T] = {};
  const double4 one = double4{} + 1.0;
  for (int64_t start = 0; start < padded; start += 4) {
    const double4 x = load4(u + start);
    const double4 lower = below ? load4(below + start) : one;
    if (keep) store4(keep + start, e[T - 1]);
    for (int t = T - 1; t >= 1; --t) e[t] += x * e[t - 1];
    e[0] += x * lower;
  }
  for (int t = 0; t < T; ++t) store4(out + t * kLanes, e[t]);
}

// Degrees per tile: 10 accumulators, the classes' vector, the degree below and the history's
// store fit the 16 vector registers of AVX2.
constexpr int64_t kMaxTile = 10;

// Returns the number of lanes filled: 8 for k <= 6; beyond, the k updates of a block are
// independent enough to hide the latency with one vector, and 4 lanes halve the merging.
__attribute__((noinline)) int64_t lane_polynomials(const double* __restrict u, int64_t padded,
                                                   int64_t k, double* __restrict lanes,
                                                   double* __restrict history) {
  switch (k) {
    case 1: return lane_polynomials_fixed<1>(u, padded, lanes), kLanes;
    case 2: return lane_polynomials_fixed<2>(u, padded, lanes), kLanes;
    case 3: return lane_polynomials_fixed<3>(u, padded, lanes), kLanes;
    case 4: return lane_polynomials_fixed<4>(u, padded, lanes), kLanes;
    case 5: return lane_polynomials_fixed<5>(u, padded, lanes), kLanes;
    case 6: return lane_polynomials_fixed<6>(u, padded, lanes), kLanes;
    default: break;
  }
  // 4 lanes, degrees in tiles of at most kMaxTile held in registers, as few tiles as that
  // allows and of equal sizes (k = 20: two tiles of 10, each iteration's 10 independent FMAs
  // above the 8 that the latency on two pipes needs; 8 + 8 + 4 left the last one half idle);
  // between tiles, the history of the tile's top degree (its value before each block) is the
  // next tile's input.
  const int64_t tiles = (k + kMaxTile - 1) / kMaxTile;
  double* below = nullptr;
  double* above = history;
  for (int64_t first = 1, tile = 0; first <= k; ++tile) {
    const int64_t size = (k - first + 1 + (tiles - tile) - 1) / (tiles - tile);
    double* out = lanes + first * kLanes;
    double* keep = first + size <= k ? above : nullptr;
    switch (size) {  // 5 .. 10 for k > 6 (k = 11: 6 + 5)
      case 5: degree_tile<5>(u, padded, below, keep, out); break;
      case 6: degree_tile<6>(u, padded, below, keep, out); break;
      case 7: degree_tile<7>(u, padded, below, keep, out); break;
      case 8: degree_tile<8>(u, padded, below, keep, out); break;
      case 9: degree_tile<9>(u, padded, below, keep, out); break;
      default: degree_tile<kMaxTile>(u, padded, below, keep, out); break;
    }
    first += size;
    std::swap(below, above);
    if (above == nullptr) above = history + padded;
  }
  const double4 one = double4{} + 1.0;
  std::memcpy(lanes, &one, sizeof one);
  return 4;
}

// One round of the lanes' product: lane l (< W) times lane l + W, truncated to degree k, for
// the W pairs at once (one vector of W); in and out hold degree b of lane l at b * kLanes + l.
template <int W, int K>
void multiply_lane_pairs(const double* __restrict in, int64_t k_runtime, double* __restrict out) {
  const int64_t k = K > 0 ? K : k_runtime;
  for (int64_t b = 0; b <= k; ++b) {
    double sum[W] = {};
    for (int64_t c = 0; c <= b; ++c) {
      const double* low = in + (b - c) * kLanes;
      const double* high = in + c * kLanes + W;
      for (int l = 0; l < W; ++l) sum[l] += low[l] * high[l];
    }
    for (int l = 0; l < W; ++l) out[b * kLanes + l] = sum[l];
  }
}

// out[b] = sum_{c <= b} x[c] y[b - c], b = 0..k (the product truncated to degree k): 4 degrees
// per vector, two accumulators each (the sums are chains of up to k + 1 multiply-adds; the
// degrees' chains are independent). y is read at y_padded + 4 (4 zeros before y[0] and zeros
// after y[k] up to whole vectors); out likewise, its padding zeroed, so that it can be the y of
// the next product. The terms are non-negative: their order does not matter to the error.
void truncated_product(const double* __restrict x, const double* __restrict y_padded, int64_t k,
                       double* __restrict out_padded) {
  const double* y = y_padded + 4;
  double* out = out_padded + 4;
  for (int64_t b0 = 0; b0 <= k; b0 += 4) {
    const int64_t last = std::min(k, b0 + 3);
    double4 even = {}, odd = {};
    int64_t c = 0;
    for (; c + 1 <= last; c += 2) {
      even += x[c] * load4(y + b0 - c);
      odd += x[c + 1] * load4(y + b0 - c - 1);
    }
    if (c <= last) even += x[c] * load4(y + b0 - c);
    store4(out + b0, even + odd);
  }
  const int64_t end = padded_degrees(k) - 4;
  for (int64_t b = 0; b < 4; ++b) out_padded[b] = 0.0;
  for (int64_t b = k + 1; b < end; ++b) out[b] = 0.0;
}

// e_b, b = 0..k, of the product of the `used` (8 or 4) lane polynomials: a tree of pairwise
// products (all terms non-negative, so the order of the sums does not matter to the error).
// Fixed k: the lanes' pairs side by side in vectors, the loops unrolled; any k (4 lanes): the
// lanes' polynomials laid out one after another and truncated_product.
template <int K>
void merge_lanes(double* __restrict lanes, int64_t used, int64_t k_runtime,
                 double* __restrict scratch, double* __restrict e) {
  const int64_t k = K > 0 ? K : k_runtime;
  if (K == 0 && used == 4) {
    const int64_t P = padded_degrees(k);
    for (int64_t l = 0; l < 4; ++l) {
      double* p = scratch + l * P;
      std::fill(p, p + P, 0.0);
      for (int64_t b = 0; b <= k; ++b) p[4 + b] = lanes[b * kLanes + l];
    }
    double* low = scratch + 4 * P;
    double* high = scratch + 5 * P;
    truncated_product(scratch + 4, scratch + P, k, low);
    truncated_product(scratch + 2 * P + 4, scratch + 3 * P, k, high);
    truncated_product(low + 4, high, k, scratch);
    for (int64_t b = 0; b <= k; ++b) e[b] = scratch[4 + b];
    return;
  }
  double* in = lanes;
  double* out = scratch;
  if (used == 8) {
    multiply_lane_pairs<4, K>(in, k, out);
    std::swap(in, out);
  }
  multiply_lane_pairs<2, K>(in, k, out);
  multiply_lane_pairs<1, K>(out, k, in);
  for (int64_t b = 0; b <= k; ++b) e[b] = in[b * kLanes];
}

// 1/(k tau) for which the exponents of float, half and bfloat16 rows are formed in float: there
// the factor is a finite float and a float difference s_j - a that overflows means
// |x| > 87, u_j = 0 as it should. Outside (tau below ~3e-39/k, k tau above ~1e36) in double.
constexpr double kMinFloatScale = 1e-36;

template <typename scalar_t>
bool exponent_in_double(double scale) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    return !(scale >= kMinFloatScale && scale <= std::numeric_limits<float>::max());
  }
}

// Rows whose tails (below) run together: the O(k^2) work and the transcendentals of kTailRows
// rows run as the lanes of vectors (at a few hundred classes the per-row constant, not the O(n)
// passes, dominates a row at k <= 8; at k = 20 the O(k^2) tail of one row took a fifth of the
// time of a row of 1000 classes, an eighth of it as lanes).
constexpr int kTailRows = 8;

// A block of kTailRows rows between their front and their tail, row r of the block in lane r
// of each array (R = kTailRows): e[b * R + r], the anchors' scores top[i * R + r], a, s_y, the
// margin, whether a score is NaN or +inf; then the tail's results and its scratch. The initial
// values are a harmless row: the lanes past a partial block's last row compute finite numbers,
// never stored.
struct RowBlock {
  static constexpr int R = kTailRows;
  explicit RowBlock(int64_t k)
      : e((k + 1) * R, 1.0), top(k * R, 0.0), a(R, 0.0), true_score(R, 0.0), alpha(R, 0.0),
        bad(R, 0.0), loss(R), slope(R), d(k * R), g(k * R), w(k * R), sigma((k + 1) * R),
        f((k + 1) * R), messages(k * (k + 1) * R), prefix((k + 1) * R), total_a(R) {}
  std::vector<double> e, top, a, true_score, alpha, bad;
  std::vector<double> loss, slope, d, g;  // the tail's results: D_m and G_i in d, g
  std::vector<double> w, sigma, f, messages, prefix, total_a;  // the tail's scratch
};

// The front of one row: its anchors (their classes in anchor_index, scores in ws.top, a), the
// rest's weights u_j and their e_b(u), b = 0..k (ws.e); kept (null when wide): the u_j as
// formed, in real, for the backward (those of the anchors and the target not zeroed: the
// backward overwrites their gradients). Returns 1 if a score is NaN or +inf, else 0. K > 0:
// k = K at compile time.
template <int K, typename scalar_t>
int64_t row_front(const scalar_t* s, int64_t classes, int64_t target, int64_t k_runtime,
                  double scale, bool wide, Workspace& ws, int64_t* anchor_index, double& a,
                  real_t<scalar_t>* kept) {
  const int64_t k = K > 0 ? K : k_runtime;
  a = top_k_without_target<K>(s, classes, target, k, ws);  // the smallest anchor

  // u_j = e^{(s_j - a) / (k tau)}, clamped to <= 1 (T is zeroed below); count NaN and +inf.
  double* u = ws.rest.data();
  const int64_t bad =
      wide ? rest_weights<scalar_t, double>(s, u, classes, a, scale, nullptr)
           : rest_weights<scalar_t, real_t<scalar_t>>(s, u, classes, a, scale, kept);
  for (int64_t i = 0; i < k; ++i) u[ws.top_index[i]] = 0.0;
  u[target] = 0.0;
  for (int64_t i = 0; i < k; ++i) anchor_index[i] = ws.top_index[i];

  // e_b(u), b = 0..k: kLanes interleaved subtraction-free recursions, then their product.
  double* lanes = ws.lanes.data();
  const int64_t used =
      lane_polynomials(u, static_cast<int64_t>(ws.rest.size()), k, lanes, ws.history.data());
  merge_lanes<K>(lanes, used, k, ws.product.data(), ws.e.data());
  return bad;
}

// The front's results of one row into lane r of the block.
void to_lane(const Workspace& ws, int64_t k, double a, double true_score, double alpha,
             int64_t bad, RowBlock& block, int r) {
  constexpr int R = RowBlock::R;
  for (int64_t b = 0; b <= k; ++b) block.e[b * R + r] = ws.e[b];
  for (int64_t i = 0; i < k; ++i) block.top[i * R + r] = ws.top[i];
  block.a[r] = a;
  block.true_score[r] = true_score;
  block.alpha[r] = alpha;
  block.bad[r] = static_cast<double>(bad);
}

// The gradient factors of the block's rows (row_tails): D_m = F_m / A - F_{m+1} / B and the
// anchors' factors G_i = d/dz_i (log A - log B) = w_i d/dw_i log B - w_i d/dw_i log A, by
// inside-outside over T, for A and B at once: with suffix_i the sigma polynomial of the w's
// after i and prefix_i that of the w's before i, M_i[c] = sum_d suffix_i[d] e_{c+d}
// (c = 0..i+1) gives w_i d/dw_i A = w_i sum_{c<=i} prefix_i[c] M_i[c+1] and
// w_i d/dw_i B = w_i sum_{c<=i} prefix_i[c] M_i[c]. All terms are non-negative.
template <int K>
void row_factors(RowBlock& block, int64_t k) {
  constexpr int R = RowBlock::R;
  const double* __restrict e = block.e.data();
  const double* __restrict w = block.w.data();
  const double* __restrict f = block.f.data();
  double* __restrict messages = block.messages.data();
  double* __restrict prefix = block.prefix.data();
  double inv_a[R], inv_b[R];
#pragma omp simd
  for (int r = 0; r < R; ++r) {
    inv_a[r] = 1.0 / block.total_a[r];
    inv_b[r] = 1.0 / f[r];
  }
  for (int64_t m = 0; m < k; ++m)
#pragma omp simd
    for (int r = 0; r < R; ++r)
      block.d[m * R + r] = f[m * R + r] * inv_a[r] - f[(m + 1) * R + r] * inv_b[r];
  const int64_t row = (k + 1) * R;  // M_i: messages[i * row + c * R + r]
  double* last = messages + (k - 1) * row;
  // (With k fixed, M_i[c] for every c <= k, M_i[k + 1] = 0, and the sums over every c: the
  // prefix is zero beyond degree i.)
#pragma GCC unroll 16
  for (int64_t c = 0; c <= k; ++c)
#pragma omp simd
    for (int r = 0; r < R; ++r) last[c * R + r] = e[c * R + r];
#pragma GCC unroll 16
  for (int64_t i = k - 2; i >= 0; --i) {
    const double* next = messages + (i + 1) * row;
    double* here = messages + i * row;
    const int64_t top = K > 0 ? K - 1 : i + 1;
#pragma GCC unroll 16
    for (int64_t c = 0; c <= top; ++c)
#pragma omp simd
      for (int r = 0; r < R; ++r)
        here[c * R + r] = next[c * R + r] + w[(i + 1) * R + r] * next[(c + 1) * R + r];
    if (K > 0)
#pragma omp simd
      for (int r = 0; r < R; ++r) here[K * R + r] = next[K * R + r];
  }
#pragma omp simd
  for (int r = 0; r < R; ++r) prefix[r] = 1.0;
  for (int64_t c = 1; c <= k; ++c)
#pragma omp simd
    for (int r = 0; r < R; ++r) prefix[c * R + r] = 0.0;
#pragma GCC unroll 16
  for (int64_t i = 0; i < k; ++i) {
    const double* here = messages + i * row;
    double sum_a[R] = {}, sum_b[R] = {};
#pragma GCC unroll 16
    for (int64_t c = 0; c <= (K > 0 ? K - 1 : i); ++c) {
#pragma omp simd
      for (int r = 0; r < R; ++r) {
        sum_a[r] += prefix[c * R + r] * here[(c + 1) * R + r];
        sum_b[r] += prefix[c * R + r] * here[c * R + r];
      }
    }
#pragma omp simd
    for (int r = 0; r < R; ++r)
      block.g[i * R + r] = w[i * R + r] * (sum_b[r] * inv_b[r] - sum_a[r] * inv_a[r]);
#pragma GCC unroll 16
    for (int64_t c = K > 0 ? K : i + 1; c >= 1; --c)
#pragma omp simd
      for (int r = 0; r < R; ++r) prefix[c * R + r] += w[i * R + r] * prefix[(c - 1) * R + r];
  }
}

// The tail of the block's rows (its lanes): the loss and the factors of the gradient.
//   dL/ds_j = slope u_j sum_m (-u_j)^m D_m on the rest, slope G_i on the anchors, -slope on
//   the target (store_lanes writes them to the rows' stats, the slope scaled by the weight).
//   With z' = tau (argument of the softplus), formed without dividing by tau so that alpha / tau
//   or |s| / (k tau) beyond the double range cannot overflow,
//     z' = alpha + (a - s_y) / k + tau (log A - log B),
//     L = relu(z') + tau log1p(e^{-|z'| / tau}),   slope = sigmoid(z' / tau) / k.
//   Fewer than k finite other scores (a = -inf, s_y finite): z' = -inf, so L = 0 and slope = 0,
//   the limit. NaN or +inf anywhere in the row (or a = s_y = -inf): L and slope are NaN.
// Every statement is a loop over the block's lanes (vectorised; the exponentials and logarithms are
// vector_math's branch-free ones). K > 0: k = K at compile time (the O(k^2) loops unrolled).
template <int K>
void row_tails(RowBlock& block, int64_t k_runtime, double scale, double tau) {
  constexpr int R = RowBlock::R;
  const int64_t k = K > 0 ? K : k_runtime;
  const double kd = static_cast<double>(k);
  const double* __restrict e = block.e.data();
  double* __restrict w = block.w.data();
  double* __restrict sigma = block.sigma.data();
  double* __restrict f = block.f.data();
  const double* a = block.a.data();

  // sigma_b(w) over T; log w_i <= 0 (NaN from 0 * inf or -inf - -inf means w_i = 1).
  for (int64_t i = 0; i < k; ++i) {
#pragma omp simd
    for (int r = 0; r < R; ++r) {
      const double log_w = (a[r] - block.top[i * R + r]) * scale;
      w[i * R + r] = exp_nonpositive(log_w < 0.0 ? log_w : 0.0);
    }
  }
  // With k fixed the loops run over whole arrays (zero beyond the current degree, so the
  // extra terms add exact zeros) and unroll completely.
#pragma omp simd
  for (int r = 0; r < R; ++r) sigma[r] = 1.0;
  for (int64_t b = 1; b <= k; ++b)
#pragma omp simd
    for (int r = 0; r < R; ++r) sigma[b * R + r] = 0.0;
  for (int64_t i = 0; i < k; ++i) {
#pragma GCC unroll 16
    for (int64_t b = K > 0 ? K : i + 1; b >= 1; --b)
#pragma omp simd
      for (int r = 0; r < R; ++r) sigma[b * R + r] += w[i * R + r] * sigma[(b - 1) * R + r];
  }

  // A = sum_b sigma_b e_b and B = sum_{b >= 1} sigma_b e_{b-1} = F_0, with
  // F_m = sum_{b > m} sigma_b e_{b-1-m} (B's own F'_m = F_{m+1}, since B's E' = (0, e_0, ...)).
  double* total_a = block.total_a.data();
#pragma omp simd
  for (int r = 0; r < R; ++r) total_a[r] = 0.0;
#pragma GCC unroll 16
  for (int64_t b = 0; b <= k; ++b)
#pragma omp simd
    for (int r = 0; r < R; ++r) total_a[r] += sigma[b * R + r] * e[b * R + r];
#pragma GCC unroll 16
  for (int64_t m = 0; m < k; ++m) {
#pragma omp simd
    for (int r = 0; r < R; ++r) f[m * R + r] = 0.0;
#pragma GCC unroll 16
    for (int64_t b = m + 1; b <= k; ++b)
#pragma omp simd
      for (int r = 0; r < R; ++r) f[m * R + r] += sigma[b * R + r] * e[(b - 1 - m) * R + r];
  }
#pragma omp simd
  for (int r = 0; r < R; ++r) f[k * R + r] = 0.0;
  const double* total_b = f;  // F_0

#pragma omp simd
  for (int r = 0; r < R; ++r) {
    const double true_score = block.true_score[r];
    const double gap = a[r] - true_score;  // overflows only for float64 scores near the ends
    const bool overflow = std::abs(gap) == kInf && std::abs(a[r]) < kInf &&
                          std::abs(true_score) < kInf;
    const double step = overflow ? a[r] / kd - true_score / kd : gap / kd;
    // log(A / B): one logarithm, and no cancellation of two large logarithms (A, B >= 1, and
    // 1 / B <= A / B < 2n: a normal double). e^{-|z'| / tau} serves the softplus and the sigmoid.
    const double z = block.alpha[r] + step + tau * log_positive(total_a[r] / total_b[r]);
    const double t = z / tau;
    const double tail = exp_nonpositive(-std::abs(t));
    const double loss = std::max(z, 0.0) + tau * log1p_nonnegative(tail);
    const double sigmoid = t >= 0.0 ? 1.0 / (1.0 + tail) : tail / (1.0 + tail);
    const bool poisoned = block.bad[r] > 0.0 || z != z;
    block.loss[r] = poisoned ? kNaN : loss;
    block.slope[r] = poisoned ? kNaN : sigmoid / kd;
  }
  row_factors<K>(block, k);
}

// A row's front and the tail of a block of rows, for one k.
template <typename scalar_t>
struct RowKernel {
  int64_t (*front)(const scalar_t*, int64_t, int64_t, int64_t, double, bool, Workspace&,
                   int64_t*, double&, real_t<scalar_t>*);
  void (*tail)(RowBlock&, int64_t, double, double);
};

// The row for this k: compiled for k <= 8 (where the O(k^2) work and the per-row constants
// dominate a row of a few hundred classes), else for any k; tails kTailRows rows at a time.
template <typename scalar_t>
RowKernel<scalar_t> row_kernel(int64_t k) {
  switch (k) {
    case 1: return {row_front<1, scalar_t>, row_tails<1>};
    case 2: return {row_front<2, scalar_t>, row_tails<2>};
    case 3: return {row_front<3, scalar_t>, row_tails<3>};
    case 4: return {row_front<4, scalar_t>, row_tails<4>};
    case 5: return {row_front<5, scalar_t>, row_tails<5>};
    case 6: return {row_front<6, scalar_t>, row_tails<6>};
    case 7: return {row_front<7, scalar_t>, row_tails<7>};
    case 8: return {row_front<8, scalar_t>, row_tails<8>};
    default: return {row_front<0, scalar_t>, row_tails<0>};
  }
}

// The first count lanes of the block to their rows (row_of[r]): the loss times the row's weight,
// and stats = [a, slope * weight (/ W for "mean"), D_0 .. D_{k-1}, G_0 .. G_{k-1}].
void store_lanes(const RowBlock& block, int64_t k, int count, const int64_t* row_of,
                 const double* row_weight, double slope_scale, double* losses, double* stats) {
  constexpr int R = RowBlock::R;
  for (int r = 0; r < count; ++r) {
    const int64_t row = row_of[r];
    double* out = stats + row * (2 + 2 * k);
    losses[row] = row_weight[row] * block.loss[r];
    out[0] = block.a[r];
    out[1] = block.slope[r] * (row_weight[row] * slope_scale);
    for (int64_t m = 0; m < k; ++m) out[2 + m] = block.d[m * R + r];
    for (int64_t i = 0; i < k; ++i) out[2 + k + i] = block.g[i * R + r];
  }
}

// The rest's gradient dL/ds_j = factor u_j h_j, h_j = sum_m (-u_j)^m D_m, by Horner's rule in
// H = double, or in H = float where that is proven as exact (horner_in_float), on vectors of
// the machine's width.
template <typename H>
struct Horner {
  typedef H vector __attribute__((vector_size(kVectorBytes)));
  typedef H unaligned __attribute__((vector_size(kVectorBytes), aligned(sizeof(H))));
  static constexpr int64_t width = kVectorBytes / sizeof(H);
};

// Float rows' u_j are floats, their D_m doubles. Summed in float, with D_m rounded to float and
// one rounding per step (k in all), Horner's h_j is within gamma_{k} sum_m |D_m| u_j^m <=
// gamma_{k} S of its value (S = sum_m |D_m|, u_j <= 1), and factor u_j h_j within
// gamma_{k+3} |factor| S: at most 2^-24 |factor| when (2k + 3) S <= 1, an ulp of the target's
// gradient (-factor), which bounds the row's largest. Rows with many classes outside the top k
// have S far below that (n = 1000, k = 20: S ~ 1e-3); near k = n or tau -> 0, S grows (up to
// binomials in k) and the row is summed in double. factor stays a normal float.
inline bool horner_in_float(const double* coefficients, int64_t k, double factor) {
  double total = 0.0;
  for (int64_t m = 0; m < k; ++m) total += std::abs(coefficients[m]);
  const double size = std::abs(factor);
  return (2.0 * static_cast<double>(k) + 3.0) * total <= 1.0 && size >= 1e-30 && size <= 1e30;
}

// Horner<H>::width gradient entries from a vector: in the scores' type as is, double to float
// through one vector conversion, else (bfloat16, float16's staged float from double) one by one.
template <typename H, typename scalar_t>
inline void store_horner(scalar_t* __restrict p, typename Horner<H>::vector v) {
  constexpr int64_t W = Horner<H>::width;
  if constexpr (std::is_same_v<scalar_t, H>) {
    *reinterpret_cast<typename Horner<H>::unaligned*>(p) = v;
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    typedef float floats __attribute__((vector_size(W * sizeof(float))));
    typedef float floats_u __attribute__((vector_size(W * sizeof(float)), aligned(4)));
    *reinterpret_cast<floats_u*>(p) = __builtin_convertvector(v, floats);
  } else {
    for (int64_t l = 0; l < W; ++l) p[l] = static_cast<scalar_t>(v[l]);
  }
}

// count classes of the rest's gradient. kept: the forward's u_j of these classes (cpu_loss's
// node keeps them), or null: formed again, by the same operations in the same precision (the
// same values); in H in buffer (kept floats summed in float are read in place).
template <typename H, typename scalar_t, typename real>
__attribute__((noinline)) void rest_gradient(const scalar_t* __restrict s,
                                             scalar_t* __restrict grad, int64_t count, double a,
                                             double scale, double factor_in,
                                             const H* __restrict coefficients, int64_t k,
                                             const real* __restrict kept, H* __restrict buffer,
                                             H* __restrict horner) {
  const real anchor = static_cast<real>(a), factor_x = static_cast<real>(scale);
  const H* __restrict u = buffer;
  if constexpr (std::is_same_v<H, real>) {
    if (kept != nullptr) u = kept;
  } else if (kept != nullptr) {
    for (int64_t j = 0; j < count; ++j) buffer[j] = static_cast<H>(kept[j]);
  }
  if (kept == nullptr) {
    for (int64_t j = 0; j < count; ++j) {
      const real x = (static_cast<real>(to_double(s[j])) - anchor) * factor_x;
      buffer[j] = static_cast<H>(exp_nonpositive(x < 0 ? x : real(0)));
    }
  }
  // Horner's rule on 8 vectors of classes at a time, held in registers through all k steps
  // (8 independent chains cover the latency of the fused multiply-add on two pipes), and the
  // gradient factor * u_j * h_j formed and stored from the registers: no buffer of h_j to fill,
  // store and read back.
  using V = typename Horner<H>::vector;
  constexpr int64_t W = Horner<H>::width, block = 8 * W;
  const H factor = static_cast<H>(factor_in);
  const V top = V{} + coefficients[k - 1], scaled = V{} + factor;
  int64_t start = 0;
  for (; start + block <= count; start += block) {
    V x[8], h[8];
    for (int v = 0; v < 8; ++v) {
      std::memcpy(&x[v], u + start + W * v, sizeof x[v]);
      h[v] = top;
    }
    for (int64_t m = k - 2; m >= 0; --m) {
      const H c = coefficients[m];
      for (int v = 0; v < 8; ++v) h[v] = c - x[v] * h[v];
    }
    for (int v = 0; v < 8; ++v) store_horner<H>(grad + start + W * v, scaled * x[v] * h[v]);
  }
  for (int64_t j = start; j < count; ++j) horner[j] = coefficients[k - 1];
  for (int64_t m = k - 2; m >= 0; --m) {
    const H c = coefficients[m];
    for (int64_t j = start; j < count; ++j) horner[j] = c - u[j] * horner[j];
  }
  for (int64_t j = start; j < count; ++j)
    grad[j] = static_cast<scalar_t>(factor * u[j] * horner[j]);
}

// The row's gradient; narrow: room for k floats (the D_m of a row summed in float).
template <typename scalar_t>
void backward_row(const scalar_t* s, int64_t classes, int64_t target, int64_t k, double scale,
                  bool wide, double grad_loss, const double* stats, const int64_t* anchor_index,
                  const real_t<scalar_t>* kept, float* narrow, scalar_t* grad) {
  using real = real_t<scalar_t>;
  const double a = stats[0];
  const double factor = stats[1] * grad_loss;
  const double* coefficients = stats + 2;
  const double* anchor_gradient = stats + 2 + k;
  bool in_float = false;
  if constexpr (std::is_same_v<real, float>) {
    in_float = !wide && horner_in_float(coefficients, k, factor);
  }
  if (in_float) {
    for (int64_t m = 0; m < k; ++m) narrow[m] = static_cast<float>(coefficients[m]);
    float u[kChunk], horner[kChunk];
    for (int64_t start = 0; start < classes; start += kChunk) {
      const int64_t count = std::min(kChunk, classes - start);
      rest_gradient<float>(s + start, grad + start, count, a, scale, factor, narrow, k,
                           kept ? kept + start : nullptr, u, horner);
    }
  } else {
    double u[kChunk], horner[kChunk];
    for (int64_t start = 0; start < classes; start += kChunk) {
      const int64_t count = std::min(kChunk, classes - start);
      if (wide) {  // u_j formed in double: never kept
        rest_gradient<double, scalar_t, double>(s + start, grad + start, count, a, scale,
                                                factor, coefficients, k, nullptr, u, horner);
      } else {
        rest_gradient<double>(s + start, grad + start, count, a, scale, factor, coefficients, k,
                              kept ? kept + start : nullptr, u, horner);
      }
    }
  }
  for (int64_t i = 0; i < k; ++i)
    grad[anchor_index[i]] = static_cast<scalar_t>(factor * anchor_gradient[i]);
  // -factor, but NaN for an infinite factor (an infinite class weight), as F.cross_entropy
  grad[target] = static_cast<scalar_t>(0.0 * factor - factor);
}

// float16 rows go through float32 (staged: a float buffer of at least 2 rows): the compiler
// does not vectorise float16 conversions element by element, half_to_float does with F16C.
// Every other dtype is used in place.
template <typename scalar_t>
const auto* row_scores(const scalar_t* row, int64_t classes, std::vector<float>& staged) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    half_to_float(row, staged.data(), classes);
    return static_cast<const float*>(staged.data());
  } else {
    return row;
  }
}

template <typename scalar_t>
auto* row_gradient(scalar_t* row, int64_t classes, std::vector<float>& staged) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return staged.data() + classes;
  } else {
    return row;
  }
}

template <typename computed_t, typename scalar_t>
void store_gradient(const computed_t* computed, scalar_t* row, int64_t classes) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) float_to_half(computed, row, classes);
}

int64_t grain_rows(int64_t classes) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(classes, 1));
}

enum class Reduction { kNone, kSum, kMean };

Reduction parse_reduction(c10::string_view reduction) {
  if (reduction == "none") return Reduction::kNone;
  if (reduction == "sum") return Reduction::kSum;
  TORCH_CHECK(reduction == "mean", "smoothtopk: reduction must be 'none', 'sum' or 'mean'");
  return Reduction::kMean;
}

void check_arguments(const at::Tensor& scores, const at::Tensor& target, int64_t k) {
  TORCH_CHECK(scores.dim() == 2, "smoothtopk: scores must be (rows, classes)");
  TORCH_CHECK(target.dim() == 1 && target.size(0) == scores.size(0),
              "smoothtopk: target must be (rows,)");
  TORCH_CHECK(target.scalar_type() == at::kLong, "smoothtopk: target must be int64");
  TORCH_CHECK(k >= 1 && k < scores.size(1), "smoothtopk: need 1 <= k < classes");
}

// row_weight[r] = weight[target[r]] (1 without weight) for the rows that are not ignored; the
// weight of an ignored row's class is never read. Returns their sum, in row order.
double gather_row_weights(const std::optional<at::Tensor>& weight, const int64_t* y,
                          int64_t rows, int64_t classes, int64_t ignore_index,
                          double* row_weight) {
  for (int64_t r = 0; r < rows; ++r) {
    // ValueError, with the message of the Python check (_validation.check_target_range)
    TORCH_CHECK_VALUE(y[r] == ignore_index || (y[r] >= 0 && y[r] < classes),
                      "target must be in [0, ", classes, ") or equal to ignore_index=",
                      ignore_index, ", found ", y[r]);
  }
  double total = 0.0;
  if (!weight.has_value()) {
    for (int64_t r = 0; r < rows; ++r) {
      row_weight[r] = y[r] == ignore_index ? 0.0 : 1.0;
      total += row_weight[r];
    }
    return total;
  }
  const at::Tensor& w = *weight;
  TORCH_CHECK(w.dim() == 1 && w.size(0) == classes && w.device().is_cpu(),
              "smoothtopk: weight must be a CPU tensor of shape (classes,)");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "weight", [&] {
    const scalar_t* p = w.const_data_ptr<scalar_t>();
    const int64_t stride = w.stride(0);
    for (int64_t r = 0; r < rows; ++r) {
      if (y[r] == ignore_index) {
        row_weight[r] = 0.0;
        continue;
      }
      row_weight[r] = static_cast<double>(p[y[r] * stride]);
      total += row_weight[r];
    }
  });
  return total;
}

// row_margin[r] = alpha_per_class[target[r]] for the rows that are not ignored (per-class margins),
// or alpha for every row when alpha_per_class is absent. An ignored row's margin is never read.
void gather_row_margins(const std::optional<at::Tensor>& alpha_per_class, double alpha,
                        const int64_t* y, int64_t rows, int64_t classes, int64_t ignore_index,
                        double* row_margin) {
  if (!alpha_per_class.has_value()) {
    std::fill(row_margin, row_margin + rows, alpha);
    return;
  }
  const at::Tensor& m = *alpha_per_class;
  TORCH_CHECK(m.dim() == 1 && m.size(0) == classes && m.device().is_cpu(),
              "smoothtopk: alpha_per_class must be a CPU tensor of shape (classes,)");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "alpha", [&] {
    const scalar_t* p = m.const_data_ptr<scalar_t>();
    const int64_t stride = m.stride(0);
    for (int64_t r = 0; r < rows; ++r)
      row_margin[r] = y[r] == ignore_index ? 0.0 : static_cast<double>(p[y[r] * stride]);
  });
}

// out: (rows,) of weight[t_r] l_r for "none", else the row-order sum (divided by the sum of the
// weights for "mean": NaN when no row counts), in float64 for float64 scores, else float32.
at::Tensor reduce_rows(const std::vector<double>& losses, Reduction reduction, double total_weight,
                       const at::TensorOptions& options) {
  const int64_t rows = static_cast<int64_t>(losses.size());
  at::Tensor out = reduction == Reduction::kNone ? at::empty({rows}, options)
                                                 : at::empty({}, options);
  std::vector<double> sum(1, 0.0);
  const double* values = losses.data();
  if (reduction != Reduction::kNone) {
    for (int64_t r = 0; r < rows; ++r) sum[0] += losses[r];
    if (reduction == Reduction::kMean) sum[0] /= total_weight;
    values = sum.data();
  }
  const int64_t count = out.numel();
  if (out.scalar_type() == at::kDouble) {
    std::copy(values, values + count, out.mutable_data_ptr<double>());
  } else {
    float* p = out.mutable_data_ptr<float>();
    for (int64_t r = 0; r < count; ++r) p[r] = static_cast<float>(values[r]);
  }
  return out;
}

// The loss (reduced) and, per row, stats = [a, slope * weight[t] (/ W for "mean"), D, G] and the
// anchors' classes. Ignored rows: loss 0, stats 0, never read.
// The forward; with keep_rest, also the rows' u_j (rest: (rows, classes) in the exponentials'
// precision, real_t; undefined where they are formed in double for narrower scores, or for an
// ignored row's entries, which are never read).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_rows(
    const at::Tensor& scores_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, int64_t k, double tau,
    double alpha, c10::string_view reduction_name,
    const std::optional<at::Tensor>& alpha_per_class, bool keep_rest) {
  check_arguments(scores_in, target_in, k);
  const Reduction reduction = parse_reduction(reduction_name);
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const int64_t rows = scores.size(0), classes = scores.size(1);
  const int64_t* y = target.const_data_ptr<int64_t>();
  std::vector<double> row_weight(rows), row_margin(rows), losses(rows);
  const double total_weight =
      gather_row_weights(weight, y, rows, classes, ignore_index, row_weight.data());
  gather_row_margins(alpha_per_class, alpha, y, rows, classes, ignore_index, row_margin.data());
  const double slope_scale = reduction == Reduction::kMean ? 1.0 / total_weight : 1.0;
  const int64_t width = 2 + 2 * k;
  at::Tensor stats = at::empty({rows, width}, scores.options().dtype(at::kDouble));
  at::Tensor anchor_index = at::empty({rows, k}, scores.options().dtype(at::kLong));
  at::Tensor rest;
  const double scale = 1.0 / (static_cast<double>(k) * tau);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, scores.scalar_type(), "smoothtopk_forward", [&] {
        const scalar_t* s = scores.const_data_ptr<scalar_t>();
        double* stats_out = stats.mutable_data_ptr<double>();
        int64_t* index_out = anchor_index.mutable_data_ptr<int64_t>();
        const bool wide = exponent_in_double<scalar_t>(scale);
        // float16 rows are read as float32 (row_scores)
        using read_t = std::conditional_t<std::is_same_v<scalar_t, c10::Half>, float, scalar_t>;
        using kept_t = real_t<read_t>;
        if (keep_rest && !wide)
          rest = at::empty({rows, classes},
                           scores.options().dtype(c10::CppTypeToScalarType<kept_t>::value));
        kept_t* rest_out = rest.defined() ? rest.mutable_data_ptr<kept_t>() : nullptr;
        const RowKernel<read_t> kernel = row_kernel<read_t>(k);
        at::parallel_for(0, rows, grain_rows(classes), [&](int64_t begin, int64_t end) {
          Workspace ws(classes, k);
          RowBlock block(k);
          int64_t row_of[RowBlock::R];
          std::vector<float> staged(std::is_same_v<scalar_t, c10::Half> ? classes : 0);
          int filled = 0;
          const auto finish = [&] {
            kernel.tail(block, k, scale, tau);
            store_lanes(block, k, filled, row_of, row_weight.data(), slope_scale,
                        losses.data(), stats_out);
            filled = 0;
          };
          for (int64_t r = begin; r < end; ++r) {
            if (y[r] == ignore_index) {
              losses[r] = 0.0;
              std::fill(stats_out + r * width, stats_out + (r + 1) * width, 0.0);
              std::fill(index_out + r * k, index_out + (r + 1) * k, int64_t{0});
              continue;
            }
            const auto* row = row_scores(s + r * classes, classes, staged);
            double a;
            const int64_t bad = kernel.front(row, classes, y[r], k, scale, wide, ws,
                                             index_out + r * k, a,
                                             rest_out ? rest_out + r * classes : nullptr);
            to_lane(ws, k, a, to_double(row[y[r]]), row_margin[r], bad, block, filled);
            row_of[filled] = r;
            if (++filled == RowBlock::R) finish();
          }
          if (filled > 0) finish();
        });
      });
  const auto out_dtype = scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out =
      reduce_rows(losses, reduction, total_weight, scores.options().dtype(out_dtype));
  return {out, stats, anchor_index, rest};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_topk_forward(
    const at::Tensor& scores, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, int64_t k, double tau, double alpha, c10::string_view reduction,
    const std::optional<at::Tensor>& alpha_per_class) {
  auto [out, stats, anchor_index, rest] = forward_rows(
      scores, target, weight, ignore_index, k, tau, alpha, reduction, alpha_per_class, false);
  return {out, stats, anchor_index};
}

// grad_out: () for "sum" / "mean", (rows,) for "none" (any strides), float32 or float64.
struct UpstreamGradient {
  explicit UpstreamGradient(const at::Tensor& g)
      : values(g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble
                   ? g
                   : g.to(at::kDouble)),
        is_double(values.scalar_type() == at::kDouble),
        stride(values.dim() == 0 ? 0 : values.stride(0)),
        data(values.const_data_ptr()) {}
  double operator[](int64_t r) const {
    return is_double ? static_cast<const double*>(data)[r * stride]
                     : static_cast<double>(static_cast<const float*>(data)[r * stride]);
  }
  at::Tensor values;
  bool is_double;
  int64_t stride;
  const void* data;
};

// The backward; rest: forward_rows' kept u_j, or undefined (formed again).
at::Tensor backward_rows(const at::Tensor& grad_out, const at::Tensor& scores_in,
                         const at::Tensor& target_in, const at::Tensor& stats_in,
                         const at::Tensor& anchor_index_in, const at::Tensor& rest,
                         int64_t ignore_index, int64_t k, double tau,
                         c10::string_view reduction_name) {
  check_arguments(scores_in, target_in, k);
  const Reduction reduction = parse_reduction(reduction_name);
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor stats = stats_in.contiguous();
  const at::Tensor anchor_index = anchor_index_in.contiguous();
  const int64_t rows = scores.size(0), classes = scores.size(1);
  TORCH_CHECK(reduction == Reduction::kNone
                  ? grad_out.dim() == 1 && grad_out.size(0) == rows
                  : grad_out.dim() == 0,
              "smoothtopk::backward: grad_out must have the shape of the loss");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == rows && stats.size(1) == 2 + 2 * k &&
                  stats.scalar_type() == at::kDouble && anchor_index.dim() == 2 &&
                  anchor_index.size(0) == rows && anchor_index.size(1) == k,
              "smoothtopk::backward: stats and anchor_index must come from smoothtopk::forward");
  const UpstreamGradient g(grad_out);
  const int64_t step = reduction == Reduction::kNone ? 1 : 0;
  at::Tensor grad = at::empty({rows, classes}, scores.options());
  const double scale = 1.0 / (static_cast<double>(k) * tau);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, scores.scalar_type(), "smoothtopk_backward", [&] {
        const scalar_t* s = scores.const_data_ptr<scalar_t>();
        const int64_t* y = target.const_data_ptr<int64_t>();
        const double* st = stats.const_data_ptr<double>();
        const int64_t* idx = anchor_index.const_data_ptr<int64_t>();
        scalar_t* out = grad.mutable_data_ptr<scalar_t>();
        const bool wide = exponent_in_double<scalar_t>(scale);
        using read_t = std::conditional_t<std::is_same_v<scalar_t, c10::Half>, float, scalar_t>;
        using kept_t = real_t<read_t>;
        TORCH_CHECK(!rest.defined() || (!wide && rest.is_contiguous() &&
                                        rest.scalar_type() == c10::CppTypeToScalarType<kept_t>::value &&
                                        rest.dim() == 2 && rest.size(0) == rows &&
                                        rest.size(1) == classes),
                    "smoothtopk::backward: rest must come from the forward of these scores");
        const kept_t* kept = rest.defined() ? rest.const_data_ptr<kept_t>() : nullptr;
        at::parallel_for(0, rows, grain_rows(classes), [&](int64_t begin, int64_t end) {
          std::vector<float> staged(std::is_same_v<scalar_t, c10::Half> ? 2 * classes : 0);
          std::vector<float> narrow(k);
          for (int64_t r = begin; r < end; ++r) {
            if (y[r] == ignore_index) {  // exactly 0, whatever the row's scores
              std::fill(out + r * classes, out + (r + 1) * classes, scalar_t(0));
              continue;
            }
            auto* row_grad = row_gradient(out + r * classes, classes, staged);
            backward_row(row_scores(s + r * classes, classes, staged), classes, y[r], k, scale,
                         wide, g[r * step], st + r * (2 + 2 * k), idx + r * k,
                         kept ? kept + r * classes : nullptr, narrow.data(), row_grad);
            store_gradient(row_grad, out + r * classes, classes);
          }
        });
      });
  return grad;
}

at::Tensor smooth_topk_backward(const at::Tensor& grad_out, const at::Tensor& scores,
                                const at::Tensor& target, const at::Tensor& stats,
                                const at::Tensor& anchor_index, int64_t ignore_index, int64_t k,
                                double tau, c10::string_view reduction) {
  return backward_rows(grad_out, scores, target, stats, anchor_index, at::Tensor(),
                       ignore_index, k, tau, reduction);
}

}  // namespace

// For cpu_loss's backward node (autograd_cpu.cpp), called without the dispatcher: the forward
// that also keeps its rows' u_j, and the backward that reads them instead of forming them again
// (the backward's exponentials: about a sixth of a step at k = 5, n = 1000).
namespace smoothtopk_cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_keeping_rest(
    const at::Tensor& scores, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, int64_t k, double tau, double alpha, c10::string_view reduction,
    const std::optional<at::Tensor>& alpha_per_class) {
  return forward_rows(scores, target, weight, ignore_index, k, tau, alpha, reduction,
                      alpha_per_class, true);
}

at::Tensor backward_from_rest(const at::Tensor& grad_out, const at::Tensor& scores,
                              const at::Tensor& target, const at::Tensor& stats,
                              const at::Tensor& anchor_index, const at::Tensor& rest,
                              int64_t ignore_index, int64_t k, double tau,
                              c10::string_view reduction) {
  return backward_rows(grad_out, scores, target, stats, anchor_index, rest, ignore_index, k,
                       tau, reduction);
}

}  // namespace smoothtopk_cpu

// The schemas are defined from Python (smoothtopk/cpu_kernel.py), with their fake kernels.
TORCH_LIBRARY_IMPL(smoothtopk, CPU, m) {
  m.impl("cpu_forward", TORCH_FN(smooth_topk_forward));
  m.impl("cpu_backward", TORCH_FN(smooth_topk_backward));
}
