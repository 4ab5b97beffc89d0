// CPU launchers: parallel over (n, c) planes with at::parallel_for, the same per-element bodies as
// CUDA. Reductions are per plane then summed over n in a fixed order, so results do not depend on
// the number of threads.
#include <ATen/Parallel.h>

#include <vector>

#include "mixed_node_launch.h"

namespace nasdeploy {
namespace {

int64_t plane_grain(const Geom& g) {
  const int64_t per_plane = g.H * g.W;
  return per_plane >= 16384 ? 1 : 16384 / per_plane;
}

// A plane-sized scratch buffer indexed like `out` for any (n, c).
Geom plane_geom(const Geom& out) { return Geom{1, 1, out.H, out.W, 0, 0, out.W, 1}; }

}  // namespace

template <typename T>
void forward_stats_cpu(const NodeArgs<T>& a, double eps, T* mean, T* invstd) {
  if (a.n_stats == 0) return;
  const Geom& o = a.out;
  std::vector<double> partial(static_cast<size_t>(2 * a.n_stats * o.N * o.C));
  at::parallel_for(0, o.N * o.C, plane_grain(o), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / o.C, c = p % o.C;
      for (int t = 0; t < a.n_terms; ++t) {
        const int s = a.stat[t];
        if (s < 0) continue;
        double sum = 0, sumsq = 0;
        for (int64_t h = 0; h < o.H; ++h)
          for (int64_t w = 0; w < o.W; ++w) {
            int arg;
            const double v = term_pre(a, t, n, c, h, w, &arg);
            sum += v;
            sumsq += v * v;
          }
        double* dst = &partial[2 * ((s * o.N + n) * o.C + c)];
        dst[0] = sum;
        dst[1] = sumsq;
      }
    }
  });
  const double count = static_cast<double>(o.N * o.H * o.W);
  for (int s = 0; s < a.n_stats; ++s)
    for (int64_t c = 0; c < o.C; ++c) {
      double sum = 0, sumsq = 0;
      for (int64_t n = 0; n < o.N; ++n) {
        sum += partial[2 * ((s * o.N + n) * o.C + c)];
        sumsq += partial[2 * ((s * o.N + n) * o.C + c) + 1];
      }
      finish_moments(sum, sumsq, count, eps, &mean[s * o.C + c], &invstd[s * o.C + c]);
    }
}

template <typename T>
void forward_reduce_cpu(const NodeArgs<T>& a, T* out) {
  const Geom& o = a.out;
  at::parallel_for(0, o.N * o.C, plane_grain(o), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / o.C, c = p % o.C;
      for (int64_t h = 0; h < o.H; ++h)
        for (int64_t w = 0; w < o.W; ++w) out[o.at(n, c, h, w)] = 0;
      // Term by term over the plane: the same additions, in the same order, as node_value().
      for (int t = 0; t < a.n_terms; ++t) {
        const T wt = a.weights[a.wcol[t]];
        for (int64_t h = 0; h < o.H; ++h)
          for (int64_t w = 0; w < o.W; ++w) out[o.at(n, c, h, w)] += wt * term_value(a, t, n, c, h, w);
      }
    }
  });
}

template <typename T>
void backward_cpu(const NodeArgs<T>& a, GradArgs<T> g, T* grad_w) {
  const Geom& o = a.out;
  const int rows = a.n_terms + 1;  // row 0: sum of grad; row 1 + t: sum of grad * y_t
  std::vector<double> partial(static_cast<size_t>(rows * o.N * o.C));
  at::parallel_for(0, o.N * o.C, plane_grain(o), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / o.C, c = p % o.C;
      double gs = 0;
      for (int64_t h = 0; h < o.H; ++h)
        for (int64_t w = 0; w < o.W; ++w) gs += g.grad[o.at(n, c, h, w)];
      partial[n * o.C + c] = gs;
      for (int t = 0; t < a.n_terms; ++t) {
        double s = 0;
        for (int64_t h = 0; h < o.H; ++h)
          for (int64_t w = 0; w < o.W; ++w)
            s += static_cast<double>(g.grad[o.at(n, c, h, w)]) * term_value(a, t, n, c, h, w);
        partial[((1 + t) * o.N + n) * o.C + c] = s;
      }
    }
  });
  const double count = static_cast<double>(o.N * o.H * o.W);
  std::vector<T> means(static_cast<size_t>(rows * o.C));
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

  const Geom pg = plane_geom(o);
  at::parallel_for(0, o.N * o.C, plane_grain(o), [&](int64_t begin, int64_t end) {
    std::vector<T> dp(static_cast<size_t>(o.H * o.W));
    std::vector<uint8_t> arg(static_cast<size_t>(o.H * o.W));
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / o.C, c = p % o.C;
      const T gm = g.g_mean[c];
      for (int t = 0; t < a.n_terms; ++t) {
        if (!kind_is_z(a.kind[t])) continue;
        const T gym = g.gy_mean[t * o.C + c];
        for (int64_t h = 0; h < o.H; ++h)
          for (int64_t w = 0; w < o.W; ++w) {
            const int64_t i = o.at(n, c, h, w);
            g.dz[t][i] = term_pre_grad(a, t, c, g.grad[i], term_value(a, t, n, c, h, w), gm, gym);
          }
      }
      for (int e = 0; e < a.n_edges; ++e) {
        const Geom& gi = a.in[e];
        T* dx = g.dx[e];
        for (int64_t i = 0; i < gi.H; ++i)
          for (int64_t j = 0; j < gi.W; ++j) dx[gi.at(n, c, i, j)] = 0;
        for (int t = 0; t < a.n_terms; ++t) {
          if (a.edge[t] != e || kind_is_z(a.kind[t])) continue;
          const T gym = g.gy_mean[t * o.C + c];
          if (a.kind[t] == kIdentity) {
            for (int64_t i = 0; i < gi.H; ++i)
              for (int64_t j = 0; j < gi.W; ++j) {
                const int64_t k = o.at(n, c, i, j);
                dx[gi.at(n, c, i, j)] += term_pre_grad(a, t, c, g.grad[k], a.x[e][gi.at(n, c, i, j)], gm, gym);
              }
            continue;
          }
          // Pool terms: the pool output's gradient over this plane, then gathered back to x.
          for (int64_t h = 0; h < o.H; ++h)
            for (int64_t w = 0; w < o.W; ++w) {
              int am = 0;
              const T y = normalize(a, t, c, term_pre(a, t, n, c, h, w, &am));
              dp[h * o.W + w] = term_pre_grad(a, t, c, g.grad[o.at(n, c, h, w)], y, gm, gym);
              arg[h * o.W + w] = static_cast<uint8_t>(am);
            }
          const int s = a.stride[e];
          for (int64_t i = 0; i < gi.H; ++i)
            for (int64_t j = 0; j < gi.W; ++j)
              dx[gi.at(n, c, i, j)] += a.kind[t] == kMaxPoolBN
                                           ? max_pool3_grad(dp.data(), arg.data(), pg, n, c, i, j, s)
                                           : avg_pool3_grad(dp.data(), pg, gi.H, gi.W, n, c, i, j, s);
        }
      }
    }
  });
}

#define ND_INSTANTIATE(T)                                                          \
  template void forward_stats_cpu<T>(const NodeArgs<T>&, double, T*, T*);          \
  template void forward_reduce_cpu<T>(const NodeArgs<T>&, T*);                     \
  template void backward_cpu<T>(const NodeArgs<T>&, GradArgs<T>, T*);
ND_INSTANTIATE(float)
ND_INSTANTIATE(double)
#undef ND_INSTANTIATE

}  // namespace nasdeploy
