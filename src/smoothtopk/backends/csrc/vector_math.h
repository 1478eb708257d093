// Branch-free double and float math for the CPU kernels: loops over these vectorise.
#pragma once

#include <cstdint>
#include <cstring>

namespace vector_math {

constexpr double kExpFloor = -708.0;  // e^x below this is treated as 0 (it is < 1e-307)

// std::bit_cast for C++17 builds (older torch); compiles to a register move.
template <typename To, typename From>
inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}

// e^x for x <= 0 within 2.5 ulps of a double (measured 1.9: tests/test_vector_math.py, through
// smoothtopk::vector_math), branch-free so that loops over it vectorise:
// x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite), e^r by its Taylor polynomial of degree 13
// (truncation < 1e-17),
// 2^n written into the exponent bits. 0 below kExpFloor (and for x = -inf); NaN stays NaN.
inline double exp_nonpositive(double x) {
  constexpr double kShift = 0x1.8p52;  // adding it rounds to an integer held in the low bits
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // n * kLn2Hi is exact for |n| < 2^11
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  const double clamped = x < kExpFloor ? kExpFloor : x;
  const double shifted = clamped * kLog2e + kShift;
  const double n = shifted - kShift;
  const double r = (clamped - n * kLn2Hi) - n * kLn2Lo;
  // Estrin's scheme: a dependency chain of 4 multiply-adds instead of Horner's 13.
  const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
  const double q0 = 1.0 + r, q1 = 1.0 / 2 + r * (1.0 / 6), q2 = 1.0 / 24 + r * (1.0 / 120);
  const double q3 = 1.0 / 720 + r * (1.0 / 5040), q4 = 1.0 / 40320 + r * (1.0 / 362880);
  const double q5 = 1.0 / 3628800 + r * (1.0 / 39916800);
  const double q6 = 1.0 / 479001600 + r * (1.0 / 6227020800);
  const double low = (q0 + r2 * q1) + r4 * (q2 + r2 * q3);
  const double high = (q4 + r2 * q5) + r4 * q6;
  const double p = low + r8 * high;
  const int64_t exponent = bit_cast<int64_t>(shifted) - bit_cast<int64_t>(kShift);
  const double result = p * bit_cast<double>((exponent + 1023) << 52);
  return x < kExpFloor ? 0.0 : result;  // a select, not a branch (built with -fno-trapping-math)
}

// The same for float inputs in float (8 lanes per AVX2 register instead of 4): Cody-Waite with
// Cephes' split of ln 2, Taylor polynomial of degree 7 (truncation < 1e-8); within 2 float ulps
// (measured 1.7), about as exact as the scores themselves. 0 below -87 (e^-87 is near the
// smallest normal).
inline float exp_nonpositive(float x) {
  constexpr float kFloor = -87.0f;
  constexpr float kShift = 0x1.8p23f;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  const float clamped = x < kFloor ? kFloor : x;
  const float shifted = clamped * kLog2e + kShift;
  const float n = shifted - kShift;
  const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;
  const float r2 = r * r, r4 = r2 * r2;
  const float low = (1.0f + r) + r2 * (0.5f + r * (1.0f / 6));
  const float high = (1.0f / 24 + r * (1.0f / 120)) + r2 * (1.0f / 720 + r * (1.0f / 5040));
  const float p = low + r4 * high;
  const int32_t exponent = bit_cast<int32_t>(shifted) - bit_cast<int32_t>(kShift);
  const float result = p * bit_cast<float>((exponent + 127) << 23);
  return x < kFloor ? 0.0f : result;
}

// e ln 2 + log m + correction for a positive normal u = 2^e m, m in [sqrt(1/2), sqrt(2)),
// branch-free, within 4 ulps (measured 3.3): log m = 2 atanh(s) with s = (m - 1) / (m + 1),
// |s| <= 0.1716, by its series to s^23 (truncation < 1e-18). The exponent is read as a double
// through the 2^52 trick (no int64-to-double conversion, which AVX2 lacks).
inline double log_decomposed(double u, double correction) {
  constexpr double kLn2Hi = 6.93147180369123816490e-01;
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kSqrt2 = 1.4142135623730951;
  const int64_t bits = bit_cast<int64_t>(u);
  const double field = bit_cast<double>((bits >> 52) | 0x4330000000000000LL) - 0x1p52;
  const double m1 = bit_cast<double>((bits & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL);
  const bool big = m1 > kSqrt2;
  const double m = big ? 0.5 * m1 : m1;
  const double e = (big ? field + 1.0 : field) - 1023.0;
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s, s4 = s2 * s2, s8 = s4 * s4;
  const double p0 = 1.0 + s2 * (1.0 / 3), p1 = 1.0 / 5 + s2 * (1.0 / 7);
  const double p2 = 1.0 / 9 + s2 * (1.0 / 11), p3 = 1.0 / 13 + s2 * (1.0 / 15);
  const double p4 = 1.0 / 17 + s2 * (1.0 / 19), p5 = 1.0 / 21 + s2 * (1.0 / 23);
  const double series = (p0 + s4 * p1) + s8 * ((p2 + s4 * p3) + s8 * (p4 + s4 * p5));
  return e * kLn2Hi + ((2.0 * s * series + e * kLn2Lo) + correction);
}

// log(1 + x) for finite x >= 0 within 4 ulps (measured 2.9): log_decomposed of u = 1 + x with
// the rounding of 1 + x put back by (x - (u - 1)) / u (so that tiny x give x).
inline double log1p_nonnegative(double x) {
  const double u = 1.0 + x;
  return log_decomposed(u, (x - (u - 1.0)) / u);
}

// log(x) for a positive normal double x (2.2e-308 <= x < inf) within 4 ulps (measured 3.3).
inline double log_positive(double x) { return log_decomposed(x, 0.0); }

}  // namespace vector_math
