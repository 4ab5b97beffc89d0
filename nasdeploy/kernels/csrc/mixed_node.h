// Fused mixed-node kernels: the per-element bodies, written once and compiled for the CPU and CUDA.
//
// A node is  out = sum_t w[t] * y_t  over "terms" t (one per non-zero candidate op of each incoming
// edge), where y_t is one of
//   kRaw        y = z_t                              (an op output computed outside, as is)
//   kBatchNorm  y = (z_t - mean) * invstd            (z_t: an op output before its BN(affine=False))
//   kMaxPoolBN  y = (maxpool3x3_s(x_e) - mean) * invstd
//   kAvgPoolBN  y = (avgpool3x3_s(x_e) - mean) * invstd   (count_include_pad=False)
//   kIdentity   y = x_e                              (stride 1)
// with batch statistics over (N, H, W) per channel. Nothing here depends on torch: the launchers
// (mixed_node_cpu.cpp, mixed_node_cuda.cu) loop over elements and call these functions.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define ND_HD __host__ __device__ __forceinline__
#else
#define ND_HD inline
#endif

namespace nasdeploy {

constexpr int kMaxEdges = 8;
constexpr int kMaxTerms = 48;  // DARTS nodes have at most 5 edges x 7 non-zero ops

enum TermKind : int32_t { kRaw = 0, kBatchNorm = 1, kMaxPoolBN = 2, kAvgPoolBN = 3, kIdentity = 4 };

ND_HD bool kind_is_z(int32_t kind) { return kind == kRaw || kind == kBatchNorm; }
ND_HD bool kind_is_pool(int32_t kind) { return kind == kMaxPoolBN || kind == kAvgPoolBN; }
ND_HD bool kind_has_stats(int32_t kind) { return kind == kBatchNorm || kind == kMaxPoolBN || kind == kAvgPoolBN; }

// Sizes and element strides of a 4-D tensor (NCHW or channels-last: only the strides differ).
struct Geom {
  int64_t N, C, H, W;
  int64_t sN, sC, sH, sW;
  ND_HD int64_t at(int64_t n, int64_t c, int64_t h, int64_t w) const { return n * sN + c * sC + h * sH + w * sW; }
  ND_HD int64_t numel() const { return N * C * H * W; }
};

// Everything a launcher needs, passed by value (fits the 4 KiB CUDA kernel-parameter limit).
template <typename T>
struct NodeArgs {
  int32_t n_edges, n_terms, n_stats;
  Geom out;                     // output geometry; every z tensor shares it
  Geom in[kMaxEdges];           // edge input geometry
  int32_t stride[kMaxEdges];    // edge stride (1 or 2)
  const T* x[kMaxEdges];        // edge inputs
  int32_t kind[kMaxTerms];
  int32_t edge[kMaxTerms];
  int32_t wcol[kMaxTerms];      // flat index of the term's weight in `weights`
  int32_t stat[kMaxTerms];      // row in mean/invstd, -1 without statistics
  const T* z[kMaxTerms];        // kRaw / kBatchNorm inputs, null otherwise
  const T* weights;
  const T* mean;                // [n_stats, C]
  const T* invstd;              // [n_stats, C]
};

// Backward outputs and the per-channel means the element-wise pass needs.
template <typename T>
struct GradArgs {
  const T* grad;                // dL/d out, geometry `out`
  const T* g_mean;              // [C]            mean of grad per channel
  const T* gy_mean;             // [n_terms, C]   mean of grad * y_t per channel
  T* dz[kMaxTerms];             // dL/d z_t for kRaw / kBatchNorm terms, null otherwise
  T* dx[kMaxEdges];             // dL/d x_e (the in-kernel terms' share only)
  T* dp[kMaxTerms];             // CUDA only: dL/d pool output of pool terms (geometry `out`)
  uint8_t* arg[kMaxTerms];      // CUDA only: argmax offset of max-pool terms
};

// ---- 3x3 pooling with padding 1 ---------------------------------------------------------------

// Max over the clipped window of output (oh, ow); *arg = dh * 3 + dw of the first maximum in scan
// order (NaN wins), the same rule as PyTorch's max_pool2d.
template <typename T>
ND_HD T max_pool3(const T* x, const Geom& g, int64_t n, int64_t c, int64_t oh, int64_t ow, int s, int* arg) {
  const int64_t h0 = oh * s - 1, w0 = ow * s - 1;
  T best = static_cast<T>(-INFINITY);
  int best_i = -1;
  for (int dh = 0; dh < 3; ++dh) {
    const int64_t h = h0 + dh;
    if (h < 0 || h >= g.H) continue;
    for (int dw = 0; dw < 3; ++dw) {
      const int64_t w = w0 + dw;
      if (w < 0 || w >= g.W) continue;
      const T v = x[g.at(n, c, h, w)];
      if (best_i < 0 || v > best || v != v) {
        best = v;
        best_i = dh * 3 + dw;
      }
    }
  }
  *arg = best_i;
  return best;
}

ND_HD int64_t avg_pool3_count(int64_t H, int64_t W, int64_t oh, int64_t ow, int s) {
  const int64_t h0 = oh * s - 1, w0 = ow * s - 1;
  const int64_t hs = h0 < 0 ? 0 : h0, he = h0 + 3 > H ? H : h0 + 3;
  const int64_t ws = w0 < 0 ? 0 : w0, we = w0 + 3 > W ? W : w0 + 3;
  return (he - hs) * (we - ws);
}

template <typename T>
ND_HD T avg_pool3(const T* x, const Geom& g, int64_t n, int64_t c, int64_t oh, int64_t ow, int s) {
  const int64_t h0 = oh * s - 1, w0 = ow * s - 1;
  const int64_t hs = h0 < 0 ? 0 : h0, he = h0 + 3 > g.H ? g.H : h0 + 3;
  const int64_t ws = w0 < 0 ? 0 : w0, we = w0 + 3 > g.W ? g.W : w0 + 3;
  T sum = 0;
  for (int64_t h = hs; h < he; ++h)
    for (int64_t w = ws; w < we; ++w) sum += x[g.at(n, c, h, w)];
  return sum / static_cast<T>((he - hs) * (we - ws));
}

// Output rows (or columns) whose 3x3 window at stride s covers input row i: [lo, hi].
ND_HD void covering_outputs(int64_t i, int s, int64_t n_out, int64_t* lo, int64_t* hi) {
  *lo = i >= 1 ? (i - 1 + s - 1) / s : 0;
  const int64_t h = (i + 1) / s;
  *hi = h < n_out - 1 ? h : n_out - 1;
}

// d(avgpool)/d x at input (i, j), given the output gradient dp (geometry gd over the output).
template <typename T>
ND_HD T avg_pool3_grad(const T* dp, const Geom& gd, int64_t H, int64_t W, int64_t n, int64_t c, int64_t i, int64_t j, int s) {
  int64_t oh0, oh1, ow0, ow1;
  covering_outputs(i, s, gd.H, &oh0, &oh1);
  covering_outputs(j, s, gd.W, &ow0, &ow1);
  T acc = 0;
  for (int64_t oh = oh0; oh <= oh1; ++oh)
    for (int64_t ow = ow0; ow <= ow1; ++ow)
      acc += dp[gd.at(n, c, oh, ow)] / static_cast<T>(avg_pool3_count(H, W, oh, ow, s));
  return acc;
}

// d(maxpool)/d x at input (i, j): the output gradients of the windows whose maximum is (i, j).
template <typename T>
ND_HD T max_pool3_grad(const T* dp, const uint8_t* arg, const Geom& gd, int64_t n, int64_t c, int64_t i, int64_t j, int s) {
  int64_t oh0, oh1, ow0, ow1;
  covering_outputs(i, s, gd.H, &oh0, &oh1);
  covering_outputs(j, s, gd.W, &ow0, &ow1);
  T acc = 0;
  for (int64_t oh = oh0; oh <= oh1; ++oh)
    for (int64_t ow = ow0; ow <= ow1; ++ow) {
      const int64_t o = gd.at(n, c, oh, ow);
      const int a = arg[o];
      if (oh * s - 1 + a / 3 == i && ow * s - 1 + a % 3 == j) acc += dp[o];
    }
  return acc;
}

// ---- terms -------------------------------------------------------------------------------------

// The term's value before its batch norm, at output element (n, c, h, w).
template <typename T>
ND_HD T term_pre(const NodeArgs<T>& a, int t, int64_t n, int64_t c, int64_t h, int64_t w, int* arg) {
  const int e = a.edge[t];
  switch (a.kind[t]) {
    case kMaxPoolBN:
      return max_pool3(a.x[e], a.in[e], n, c, h, w, a.stride[e], arg);
    case kAvgPoolBN:
      return avg_pool3(a.x[e], a.in[e], n, c, h, w, a.stride[e]);
    case kIdentity:
      return a.x[e][a.in[e].at(n, c, h, w)];
    default:
      return a.z[t][a.out.at(n, c, h, w)];
  }
}

template <typename T>
ND_HD T normalize(const NodeArgs<T>& a, int t, int64_t c, T pre) {
  const int s = a.stat[t];
  if (s < 0) return pre;
  const int64_t i = s * a.out.C + c;
  return (pre - a.mean[i]) * a.invstd[i];
}

// y_t at output element (n, c, h, w).
template <typename T>
ND_HD T term_value(const NodeArgs<T>& a, int t, int64_t n, int64_t c, int64_t h, int64_t w) {
  int arg;
  return normalize(a, t, c, term_pre(a, t, n, c, h, w, &arg));
}

// The node output at one element: terms added in a fixed order (deterministic).
template <typename T>
ND_HD T node_value(const NodeArgs<T>& a, int64_t n, int64_t c, int64_t h, int64_t w) {
  T acc = 0;
  for (int t = 0; t < a.n_terms; ++t) acc += a.weights[a.wcol[t]] * term_value(a, t, n, c, h, w);
  return acc;
}

// Batch mean and 1/sqrt(var + eps) from the sum and sum of squares of `count` values.
template <typename T>
ND_HD void finish_moments(double sum, double sumsq, double count, double eps, T* mean, T* invstd) {
  const double m = sum / count;
  double var = sumsq / count - m * m;
  var = var < 0 ? 0 : var;
  *mean = static_cast<T>(m);
  *invstd = static_cast<T>(1.0 / sqrt(var + eps));
}

// Gradient of w * BN(v) w.r.t. v (batch statistics): w * invstd * (g - mean(g) - y * mean(g * y)).
template <typename T>
ND_HD T bn_input_grad(T g, T y, T w, T invstd, T g_mean, T gy_mean) {
  return w * invstd * (g - g_mean - y * gy_mean);
}

// Gradient w.r.t. a term's pre-BN value (or a kRaw z) at one output element, given the per-channel
// means of g and g * y_t.
template <typename T>
ND_HD T term_pre_grad(const NodeArgs<T>& a, int t, int64_t c, T g, T y, T g_mean, T gy_mean) {
  const T w = a.weights[a.wcol[t]];
  const int s = a.stat[t];
  if (s < 0) return w * g;
  return bn_input_grad(g, y, w, a.invstd[s * a.out.C + c], g_mean, gy_mean);
}

}  // namespace nasdeploy
