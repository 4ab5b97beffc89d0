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
#define ND_HD inline __attribute__((always_inline))
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

// Which neighbours of a window centre exist: row -1 / +1 and column -1 / +1.
struct Window {
  bool up, down, left, right;
};

// The window of output (oh, ow) at stride s over an H x W input; its centre is input (oh*s, ow*s).
ND_HD Window window_at(int64_t oh, int64_t ow, int s, int64_t H, int64_t W) {
  return Window{oh * s >= 1, oh * s + 1 < H, ow * s >= 1, ow * s + 1 < W};
}

ND_HD int pool_count(Window v) { return (1 + v.up + v.down) * (1 + v.left + v.right); }

// NaN and infinity follow PyTorch's max_pool2d (CPU and CUDA kernels alike): scanning the window in
// row-major order, a value is taken when it is greater than the running maximum or is NaN. So a
// window holding NaN outputs NaN and its argmax is its last NaN; otherwise the argmax is the first
// position holding the maximum; a window of -inf only reports its first position. Missing
// neighbours (padding) read as -inf, which is never taken, so the argmax is always in the window.
template <typename T>
ND_HD bool max_takes(T x, T best) {
  return (x > best) | (x != x);  // bitwise: no branch on data
}

template <typename T>
ND_HD T max_step(T x, T best) {
  return max_takes(x, best) ? x : best;
}

// Max over the window around `c` (sH, sW: element strides); missing neighbours read as -inf.
template <typename T>
ND_HD T max_pool3(const T* c, int64_t sH, int64_t sW, Window v) {
  const T lo = static_cast<T>(-INFINITY);
  T best = lo;
  best = max_step(v.up && v.left ? c[-sH - sW] : lo, best);
  best = max_step(v.up ? c[-sH] : lo, best);
  best = max_step(v.up && v.right ? c[-sH + sW] : lo, best);
  best = max_step(v.left ? c[-sW] : lo, best);
  best = max_step(c[0], best);
  best = max_step(v.right ? c[sW] : lo, best);
  best = max_step(v.down && v.left ? c[sH - sW] : lo, best);
  best = max_step(v.down ? c[sH] : lo, best);
  best = max_step(v.down && v.right ? c[sH + sW] : lo, best);
  return best;
}

// The window's first position (row-major) that exists: where a window of -inf reports its maximum.
ND_HD int first_in_window(Window v) { return (v.up ? 0 : 3) + (v.left ? 0 : 1); }

// Whether argmax code `code` (dh * 3 + dw, see max_pool3_code) names a position inside window v.
ND_HD bool code_in_window(int code, Window v) {
  if (code < 0 || code > 8) return false;
  const int dh = code / 3, dw = code % 3;
  return (dh != 0 || v.up) && (dh != 2 || v.down) && (dw != 0 || v.left) && (dw != 2 || v.right);
}

// One scan step of max_pool3_code: position k (present: it exists) against the running maximum.
template <typename T>
ND_HD void argmax_step(bool present, T x, int k, T* best, T* code) {
  const bool take = present & max_takes(x, *best);
  *best = take ? x : *best;
  *code = take ? static_cast<T>(k) : *code;
}

// The argmax of the window as dh * 3 + dw (dh, dw in 0..2; 4 is the centre), by max_pool3's own scan
// and PyTorch's rule above, so it is always a position of the window (code_in_window holds) and its
// value is max_pool3's result, NaN included. Kept apart from max_pool3 and returned as T so both
// stay branch-free, vectorisable selects on the CPU.
template <typename T>
ND_HD T max_pool3_code(const T* c, int64_t sH, int64_t sW, Window v) {
  const T lo = static_cast<T>(-INFINITY);
  T best = lo;
  T code = static_cast<T>(first_in_window(v));
  argmax_step(v.up && v.left, v.up && v.left ? c[-sH - sW] : lo, 0, &best, &code);
  argmax_step(v.up, v.up ? c[-sH] : lo, 1, &best, &code);
  argmax_step(v.up && v.right, v.up && v.right ? c[-sH + sW] : lo, 2, &best, &code);
  argmax_step(v.left, v.left ? c[-sW] : lo, 3, &best, &code);
  argmax_step(true, c[0], 4, &best, &code);
  argmax_step(v.right, v.right ? c[sW] : lo, 5, &best, &code);
  argmax_step(v.down && v.left, v.down && v.left ? c[sH - sW] : lo, 6, &best, &code);
  argmax_step(v.down, v.down ? c[sH] : lo, 7, &best, &code);
  argmax_step(v.down && v.right, v.down && v.right ? c[sH + sW] : lo, 8, &best, &code);
  return code;
}

// Mean over the window around `c`, padding not counted (count_include_pad=False); scan-order sum.
template <typename T>
ND_HD T avg_pool3(const T* c, int64_t sH, int64_t sW, Window v) {
  T sum = 0;
  if (v.up) {
    if (v.left) sum += c[-sH - sW];
    sum += c[-sH];
    if (v.right) sum += c[-sH + sW];
  }
  if (v.left) sum += c[-sW];
  sum += c[0];
  if (v.right) sum += c[sW];
  if (v.down) {
    if (v.left) sum += c[sH - sW];
    sum += c[sH];
    if (v.right) sum += c[sH + sW];
  }
  return sum / static_cast<T>(pool_count(v));
}

// Stride 1: the outputs whose windows cover input (i, j) form the 3x3 window around (i, j) in the
// output map, so the gathers read that window. dps: pool-output gradient / window count.
template <typename T>
ND_HD T avg_pool3_grad_s1(const T* dps, int64_t sH, int64_t sW, Window v) {
  T acc = 0;
  if (v.up) {
    if (v.left) acc += dps[-sH - sW];
    acc += dps[-sH];
    if (v.right) acc += dps[-sH + sW];
  }
  if (v.left) acc += dps[-sW];
  acc += dps[0];
  if (v.right) acc += dps[sW];
  if (v.down) {
    if (v.left) acc += dps[sH - sW];
    acc += dps[sH];
    if (v.right) acc += dps[sH + sW];
  }
  return acc;
}

// Stride 1: output (i + dh - 1, j + dw - 1) has input (i, j) at window position (2 - dh, 2 - dw).
template <typename T, typename A>
ND_HD T max_pool3_grad_s1(const T* dp, const A* arg, int64_t sH, int64_t sW, Window v) {
  const T zero = 0;
  T acc = 0;
  if (v.up) {
    if (v.left) acc += arg[-sH - sW] == A(8) ? dp[-sH - sW] : zero;
    acc += arg[-sH] == A(7) ? dp[-sH] : zero;
    if (v.right) acc += arg[-sH + sW] == A(6) ? dp[-sH + sW] : zero;
  }
  if (v.left) acc += arg[-sW] == A(5) ? dp[-sW] : zero;
  acc += arg[0] == A(4) ? dp[0] : zero;
  if (v.right) acc += arg[sW] == A(3) ? dp[sW] : zero;
  if (v.down) {
    if (v.left) acc += arg[sH - sW] == A(2) ? dp[sH - sW] : zero;
    acc += arg[sH] == A(1) ? dp[sH] : zero;
    if (v.right) acc += arg[sH + sW] == A(0) ? dp[sH + sW] : zero;
  }
  return acc;
}

// Output rows (or columns) whose 3x3 window at stride s covers input row i: [lo, hi].
ND_HD void covering_outputs(int64_t i, int s, int64_t n_out, int64_t* lo, int64_t* hi) {
  *lo = i >= 1 ? (i - 1 + s - 1) / s : 0;
  const int64_t h = (i + 1) / s;
  *hi = h < n_out - 1 ? h : n_out - 1;
}

// The gathers over given covering ranges [oh0, oh1] x [ow0, ow1] (see covering_outputs).
template <typename T>
ND_HD T avg_pool3_grad_in(const T* dps, const Geom& gd, int64_t n, int64_t c, int64_t oh0, int64_t oh1,
                          int64_t ow0, int64_t ow1) {
  T acc = 0;
  for (int64_t oh = oh0; oh <= oh1; ++oh)
    for (int64_t ow = ow0; ow <= ow1; ++ow) acc += dps[gd.at(n, c, oh, ow)];
  return acc;
}

template <typename T, typename A>
ND_HD T max_pool3_grad_in(const T* dp, const A* arg, const Geom& gd, int64_t n, int64_t c, int64_t i, int64_t j,
                          int s, int64_t oh0, int64_t oh1, int64_t ow0, int64_t ow1) {
  T acc = 0;
  for (int64_t oh = oh0; oh <= oh1; ++oh)
    for (int64_t ow = ow0; ow <= ow1; ++ow) {
      const int64_t o = gd.at(n, c, oh, ow);
      const int code = static_cast<int>((i - oh * s + 1) * 3 + (j - ow * s + 1));
      acc += arg[o] == static_cast<A>(code) ? dp[o] : static_cast<T>(0);
    }
  return acc;
}

// d(avgpool)/dx at input (i, j) from dps = d(pool output) / window count, laid out as gd.
template <typename T>
ND_HD T avg_pool3_grad(const T* dps, const Geom& gd, int64_t n, int64_t c, int64_t i, int64_t j, int s) {
  int64_t oh0, oh1, ow0, ow1;
  covering_outputs(i, s, gd.H, &oh0, &oh1);
  covering_outputs(j, s, gd.W, &ow0, &ow1);
  return avg_pool3_grad_in(dps, gd, n, c, oh0, oh1, ow0, ow1);
}

// d(maxpool)/dx at input (i, j): the output gradients of the windows whose maximum is (i, j).
template <typename T, typename A>
ND_HD T max_pool3_grad(const T* dp, const A* arg, const Geom& gd, int64_t n, int64_t c, int64_t i, int64_t j, int s) {
  int64_t oh0, oh1, ow0, ow1;
  covering_outputs(i, s, gd.H, &oh0, &oh1);
  covering_outputs(j, s, gd.W, &ow0, &ow1);
  return max_pool3_grad_in(dp, arg, gd, n, c, i, j, s, oh0, oh1, ow0, ow1);
}

// ---- terms -------------------------------------------------------------------------------------

// The value before batch norm of a pool term at output (n, c, h, w) of edge input x (geometry g).
template <typename T>
ND_HD T pool_pre(int32_t kind, const T* x, const Geom& g, int64_t n, int64_t c, int64_t h, int64_t w, int s) {
  const Window v = window_at(h, w, s, g.H, g.W);
  const T* ctr = x + g.at(n, c, h * s, w * s);
  return kind == kMaxPoolBN ? max_pool3(ctr, g.sH, g.sW, v) : avg_pool3(ctr, g.sH, g.sW, v);
}

// The argmax code (see max_pool3_code) of a max-pool term at output (n, c, h, w).
template <typename T>
ND_HD T pool_code(const T* x, const Geom& g, int64_t n, int64_t c, int64_t h, int64_t w, int s) {
  const Window v = window_at(h, w, s, g.H, g.W);
  return max_pool3_code(x + g.at(n, c, h * s, w * s), g.sH, g.sW, v);
}

// The term's value before its batch norm, at output element (n, c, h, w).
template <typename T>
ND_HD T term_pre(const NodeArgs<T>& a, int t, int64_t n, int64_t c, int64_t h, int64_t w) {
  const int e = a.edge[t];
  switch (a.kind[t]) {
    case kMaxPoolBN:
    case kAvgPoolBN:
      return pool_pre(a.kind[t], a.x[e], a.in[e], n, c, h, w, a.stride[e]);
    case kIdentity:
      return a.x[e][a.in[e].at(n, c, h, w)];
    default:
      return a.z[t][a.out.at(n, c, h, w)];
  }
}

template <typename T>
ND_HD T bn_normalize(T v, T mean, T invstd) { return (v - mean) * invstd; }

template <typename T>
ND_HD T normalize(const NodeArgs<T>& a, int t, int64_t c, T pre) {
  const int s = a.stat[t];
  if (s < 0) return pre;
  const int64_t i = s * a.out.C + c;
  return bn_normalize(pre, a.mean[i], a.invstd[i]);
}

// y_t at output element (n, c, h, w).
template <typename T>
ND_HD T term_value(const NodeArgs<T>& a, int t, int64_t n, int64_t c, int64_t h, int64_t w) {
  return normalize(a, t, c, term_pre(a, t, n, c, h, w));
}

// The node output at one element: terms added in a fixed order (the CUDA reduction kernel runs this
// for four elements at once, interleaved; the CPU launcher adds term by term over a run, same order).
template <typename T>
ND_HD T node_value(const NodeArgs<T>& a, int64_t n, int64_t c, int64_t h, int64_t w) {
  T acc = 0;
  for (int t = 0; t < a.n_terms; ++t) acc += a.weights[a.wcol[t]] * term_value(a, t, n, c, h, w);
  return acc;
}

// Element `idx` in memory order -> (n, c, h, w), for NCHW or channels-last storage.
template <typename I>
ND_HD void unravel_as(const Geom& g, I idx, int64_t* n, int64_t* c, int64_t* h, int64_t* w) {
  const I C = static_cast<I>(g.C), H = static_cast<I>(g.H), W = static_cast<I>(g.W);
  if (g.sW == 1) {
    *w = idx % W; idx /= W;
    *h = idx % H; idx /= H;
    *c = idx % C; *n = idx / C;
  } else {
    *c = idx % C; idx /= C;
    *w = idx % W; idx /= W;
    *h = idx % H; *n = idx / H;
  }
}

// 32-bit division when the tensor allows it (64-bit division costs several times more on a GPU).
ND_HD void unravel(const Geom& g, int64_t idx, int64_t* n, int64_t* c, int64_t* h, int64_t* w) {
  if (g.numel() < (int64_t{1} << 31)) {
    unravel_as<uint32_t>(g, static_cast<uint32_t>(idx), n, c, h, w);
  } else {
    unravel_as<int64_t>(g, idx, n, c, h, w);
  }
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

// Gradient w.r.t. a term's pre-BN value (or a kRaw / kIdentity input) at one output element,
// given the per-channel means of g and g * y_t. invstd is ignored for terms without statistics.
template <typename T>
ND_HD T pre_grad(bool has_stats, T w, T invstd, T g, T y, T g_mean, T gy_mean) {
  return has_stats ? bn_input_grad(g, y, w, invstd, g_mean, gy_mean) : w * g;
}

template <typename T>
ND_HD T term_pre_grad(const NodeArgs<T>& a, int t, int64_t c, T g, T y, T g_mean, T gy_mean) {
  const int s = a.stat[t];
  const T invstd = s >= 0 ? a.invstd[s * a.out.C + c] : static_cast<T>(1);
  return pre_grad(s >= 0, a.weights[a.wcol[t]], invstd, g, y, g_mean, gy_mean);
}

// ---- backward, one element (the CUDA threads' bodies; the CPU emulation runs them serially) ------

// At output element (n, c, h, w): dL/dz of every z term, and for pool terms the pool output's
// gradient (average pool: divided by the window count) and the max-pool argmax code, which the
// gather reads. g.dp / g.arg are laid out like the output.
template <typename T>
ND_HD void backward_output_element(const NodeArgs<T>& a, const GradArgs<T>& g, int64_t n, int64_t c, int64_t h,
                                   int64_t w) {
  const int64_t i = a.out.at(n, c, h, w);
  const T gv = g.grad[i], gm = g.g_mean[c];
  for (int t = 0; t < a.n_terms; ++t) {
    const int kind = a.kind[t];
    if (kind == kIdentity) continue;
    const T pre = term_pre(a, t, n, c, h, w);
    const T d = term_pre_grad(a, t, c, gv, normalize(a, t, c, pre), gm, g.gy_mean[t * a.out.C + c]);
    const int e = a.edge[t];
    if (kind_is_z(kind)) {
      g.dz[t][i] = d;
    } else if (kind == kMaxPoolBN) {
      g.dp[t][i] = d;
      g.arg[t][i] = static_cast<uint8_t>(pool_code(a.x[e], a.in[e], n, c, h, w, a.stride[e]));
    } else {
      g.dp[t][i] = d / static_cast<T>(pool_count(window_at(h, w, a.stride[e], a.in[e].H, a.in[e].W)));
    }
  }
}

// dL/dx_e at input element (n, c, i, j): the in-kernel terms of edge e, added in term order.
template <typename T>
ND_HD T backward_input_element(const NodeArgs<T>& a, const GradArgs<T>& g, int e, int64_t n, int64_t c, int64_t i,
                               int64_t j) {
  const Geom& gi = a.in[e];
  const int s = a.stride[e];
  T acc = 0;
  for (int t = 0; t < a.n_terms; ++t) {
    const int kind = a.kind[t];
    if (a.edge[t] != e || kind_is_z(kind)) continue;  // z terms' gradients go to their z
    if (kind == kIdentity) {
      const T x = a.x[e][gi.at(n, c, i, j)];
      acc += term_pre_grad(a, t, c, g.grad[a.out.at(n, c, i, j)], x, g.g_mean[c], g.gy_mean[t * a.out.C + c]);
    } else if (s == 1) {  // the covering outputs are the window around (i, j)
      const Window v = window_at(i, j, 1, a.out.H, a.out.W);
      const int64_t o = a.out.at(n, c, i, j);
      acc += kind == kMaxPoolBN ? max_pool3_grad_s1(g.dp[t] + o, g.arg[t] + o, a.out.sH, a.out.sW, v)
                                : avg_pool3_grad_s1(g.dp[t] + o, a.out.sH, a.out.sW, v);
    } else if (kind == kMaxPoolBN) {
      acc += max_pool3_grad(g.dp[t], g.arg[t], a.out, n, c, i, j, s);
    } else {
      acc += avg_pool3_grad(g.dp[t], a.out, n, c, i, j, s);
    }
  }
  return acc;
}

}  // namespace nasdeploy
