// The CUDA launchers' structure run serially on the CPU: the same per-element bodies
// (node_value, backward_output_element, backward_input_element), the same global dp / argmax
// buffers and per-plane partial sums. Only for tests (NASDEPLOY_EMULATE_CUDA=1): it checks the CUDA
// code paths on machines without a GPU. Block reductions are replaced by serial sums.
#include <vector>

#include "mixed_node_launch.h"

namespace nasdeploy {
namespace {

// Per-(row, n, c) plane sums of f(row, n, c, h, w) in double, then per (row, c) over n in order.
template <typename F>
std::vector<double> plane_sums(const Geom& o, int rows, F&& f) {
  std::vector<double> partial(static_cast<size_t>(rows * o.N * o.C));
  for (int r = 0; r < rows; ++r)
    for (int64_t n = 0; n < o.N; ++n)
      for (int64_t c = 0; c < o.C; ++c) {
        double sum = 0;
        for (int64_t k = 0; k < o.H * o.W; ++k) sum += f(r, n, c, k / o.W, k % o.W);
        partial[(r * o.N + n) * o.C + c] = sum;
      }
  return partial;
}

}  // namespace

template <typename T>
void forward_emulated(const NodeArgs<T>& a, double eps, T* mean, T* invstd, T* out) {
  const Geom& o = a.out;
  std::vector<int> stat_term(static_cast<size_t>(a.n_stats));
  for (int t = 0; t < a.n_terms; ++t)
    if (a.stat[t] >= 0) stat_term[a.stat[t]] = t;
  const auto s1 = plane_sums(o, a.n_stats, [&](int s, int64_t n, int64_t c, int64_t h, int64_t w) {
    return static_cast<double>(term_pre(a, stat_term[s], n, c, h, w));
  });
  const auto s2 = plane_sums(o, a.n_stats, [&](int s, int64_t n, int64_t c, int64_t h, int64_t w) {
    const double v = term_pre(a, stat_term[s], n, c, h, w);
    return v * v;
  });
  for (int s = 0; s < a.n_stats; ++s)
    for (int64_t c = 0; c < o.C; ++c) {
      double sum = 0, sumsq = 0;
      for (int64_t n = 0; n < o.N; ++n) {
        sum += s1[(s * o.N + n) * o.C + c];
        sumsq += s2[(s * o.N + n) * o.C + c];
      }
      finish_moments(sum, sumsq, static_cast<double>(o.N * o.H * o.W), eps, &mean[s * o.C + c], &invstd[s * o.C + c]);
    }
  NodeArgs<T> b = a;
  b.mean = mean;
  b.invstd = invstd;
  for (int64_t idx = 0; idx < o.numel(); ++idx) {
    int64_t n, c, h, w;
    unravel(o, idx, &n, &c, &h, &w);
    out[o.at(n, c, h, w)] = node_value(b, n, c, h, w);
  }
}

template <typename T>
void backward_emulated(const NodeArgs<T>& a, GradArgs<T> g, T* grad_w) {
  const Geom& o = a.out;
  const int rows = a.n_terms + 1;
  const auto partial = plane_sums(o, rows, [&](int r, int64_t n, int64_t c, int64_t h, int64_t w) {
    const double gv = g.grad[o.at(n, c, h, w)];
    return r == 0 ? gv : gv * term_value(a, r - 1, n, c, h, w);
  });
  std::vector<T> means(static_cast<size_t>(rows * o.C));
  const double count = static_cast<double>(o.N * o.H * o.W);
  for (int r = 0; r < rows; ++r) {
    double total = 0;
    for (int64_t c = 0; c < o.C; ++c) {
      double sum = 0;
      for (int64_t n = 0; n < o.N; ++n) sum += partial[(r * o.N + n) * o.C + c];
      means[r * o.C + c] = static_cast<T>(sum / count);
      total += sum;
    }
    if (r > 0) grad_w[a.wcol[r - 1]] = static_cast<T>(total);
  }
  g.g_mean = means.data();
  g.gy_mean = means.data() + o.C;
  std::vector<std::vector<T>> dp(static_cast<size_t>(a.n_terms));
  std::vector<std::vector<uint8_t>> arg(static_cast<size_t>(a.n_terms));
  for (int t = 0; t < a.n_terms; ++t) {
    if (!kind_is_pool(a.kind[t])) continue;
    dp[t].assign(static_cast<size_t>(o.numel()), T(0));
    arg[t].assign(static_cast<size_t>(o.numel()), uint8_t(0));
    g.dp[t] = dp[t].data();
    g.arg[t] = arg[t].data();
  }
  for (int64_t idx = 0; idx < o.numel(); ++idx) {
    int64_t n, c, h, w;
    unravel(o, idx, &n, &c, &h, &w);
    backward_output_element(a, g, n, c, h, w);
  }
  for (int e = 0; e < a.n_edges; ++e) {
    const Geom& gi = a.in[e];
    for (int64_t idx = 0; idx < gi.numel(); ++idx) {
      int64_t n, c, i, j;
      unravel(gi, idx, &n, &c, &i, &j);
      g.dx[e][gi.at(n, c, i, j)] = backward_input_element(a, g, e, n, c, i, j);
    }
  }
}

#define ND_INSTANTIATE(T)                                                              \
  template void forward_emulated<T>(const NodeArgs<T>&, double, T*, T*, T*);           \
  template void backward_emulated<T>(const NodeArgs<T>&, GradArgs<T>, T*);
ND_INSTANTIATE(float)
ND_INSTANTIATE(double)
#undef ND_INSTANTIATE

}  // namespace nasdeploy
