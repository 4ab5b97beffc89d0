// CPU launchers over the per-element bodies of mixed_node.h, parallel with at::parallel_for.
//
// Work is split into tasks that are contiguous runs of the output: one (n, c) plane for NCHW, one
// image n for channels-last. A task computes each term's values for its run once into a small
// buffer (pools via max_pool3 / avg_pool3, z and identity read in place), so the arithmetic loops
// are plain streams the compiler vectorises. Reductions are per task, then summed over n in a fixed
// order: the results do not depend on the number of threads.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "mixed_node_launch.h"

namespace nasdeploy {
namespace {

bool is_channels_last(const Geom& o) { return o.C > 1 && o.sC == 1; }

template <bool CL>
struct Task {
  int64_t n, c0;    // batch index, first channel
  int64_t offset;   // of the run in any tensor laid out like `out`
  int64_t pixels;   // H * W
  int64_t channels; // C
  // Channels per pixel in the run: C (channels-last) or 1, a compile-time 1 for NCHW so the
  // per-pixel channel loops vanish and the pixel loops vectorise.
  int64_t lanes() const { return CL ? channels : 1; }
  int64_t size() const { return pixels * lanes(); }
};

template <bool CL>
int64_t task_count(const Geom& o) { return CL ? o.N : o.N * o.C; }

template <bool CL>
Task<CL> make_task(const Geom& o, int64_t k) {
  if (CL) return Task<CL>{k, 0, k * o.sN, o.H * o.W, o.C};
  return Task<CL>{k / o.C, k % o.C, o.at(k / o.C, k % o.C, 0, 0), o.H * o.W, o.C};
}

template <bool CL>
int64_t grain(const Geom& o) {
  const int64_t per_task = CL ? o.H * o.W * o.C : o.H * o.W;
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(per_task, 1));
}

// f(i, k) over the run in memory order: i indexes the run, k is the channel offset from c0.
template <bool CL, typename F>
inline void stream(const Task<CL>& tk, F&& f) {
  if (CL) {
    const int64_t lanes = tk.lanes();
    for (int64_t p = 0; p < tk.pixels; ++p)
      for (int64_t k = 0; k < lanes; ++k) f(p * lanes + k, k);
  } else {
    for (int64_t i = 0; i < tk.pixels; ++i) f(i, int64_t{0});
  }
}

// f(h, w, v): every output pixel of the run with its pooling window; for NCHW the interior columns
// get a compile-time full window so that loop vectorises.
template <typename F>
inline void for_each_window(const Geom& o, const Geom& in, int s, F&& f) {
  const int64_t last_full = in.W >= 2 ? (in.W - 2) / s : -1;  // last w whose window has column +1
  const int64_t interior_end = std::min(o.W, last_full + 1);
  for (int64_t h = 0; h < o.H; ++h) {
    const Window row = window_at(h, 0, s, in.H, in.W);
    int64_t w = 0;
    for (; w < std::min<int64_t>(1, o.W); ++w) f(h, w, window_at(h, w, s, in.H, in.W));
    if (row.up && row.down) {
      for (; w < interior_end; ++w) f(h, w, Window{true, true, true, true});
    } else {
      for (; w < interior_end; ++w) f(h, w, Window{row.up, row.down, true, true});
    }
    for (; w < o.W; ++w) f(h, w, window_at(h, w, s, in.H, in.W));
  }
}

// The pre-BN values of pool term t over the task's run (and, when `code`, the max-pool argmax codes,
// as T so that the loop stays vectorisable).
template <typename T, bool CL>
void load_pool(const NodeArgs<T>& a, int t, const Task<CL>& tk, T* buf, T* code = nullptr) {
  const int e = a.edge[t];
  const Geom& g = a.in[e];
  const int s = a.stride[e];
  const T* x = a.x[e] + g.at(tk.n, tk.c0, 0, 0);
  const int64_t lanes = tk.lanes();
  // Compile-time unit strides where the layout fixes them (NCHW: along w; channels-last: along c).
  const int64_t sW = CL ? g.sW : 1, sC = CL ? 1 : g.sC, sH = g.sH;
  if (a.kind[t] == kMaxPoolBN) {
    for_each_window(a.out, g, s, [&](int64_t h, int64_t w, Window v) {
      const T* ctr = x + (h * s) * sH + (w * s) * sW;
      const int64_t base = (h * a.out.W + w) * lanes;
      for (int64_t k = 0; k < lanes; ++k) buf[base + k] = max_pool3(ctr + k * sC, sH, sW, v);
    });
    if (code) {  // a pass of its own: fused into the one above, neither loop would vectorise
      for_each_window(a.out, g, s, [&](int64_t h, int64_t w, Window v) {
        const T* ctr = x + (h * s) * sH + (w * s) * sW;
        const int64_t base = (h * a.out.W + w) * lanes;
        for (int64_t k = 0; k < lanes; ++k) code[base + k] = max_pool3_code(ctr + k * sC, sH, sW, v);
      });
    }
  } else {
    for_each_window(a.out, g, s, [&](int64_t h, int64_t w, Window v) {
      const T* ctr = x + (h * s) * g.sH + (w * s) * sW;
      const int64_t base = (h * a.out.W + w) * lanes;
      for (int64_t k = 0; k < lanes; ++k) buf[base + k] = avg_pool3(ctr + k * sC, sH, sW, v);
    });
  }
}

// Pointer to term t's pre-BN values over the run: in place for z / identity, else pooled into buf.
template <typename T, bool CL>
const T* term_run(const NodeArgs<T>& a, int t, const Task<CL>& tk, T* buf) {
  switch (a.kind[t]) {
    case kIdentity:
      return a.x[a.edge[t]] + tk.offset;  // stride 1: same shape and layout as the output
    case kMaxPoolBN:
    case kAvgPoolBN:
      load_pool(a, t, tk, buf);
      return buf;
    default:
      return a.z[t] + tk.offset;
  }
}

// Per-channel statistics of term t for the task's channels (identity 0 / 1 without statistics).
template <typename T>
struct ChannelStats {
  const T* mean;
  const T* invstd;
};

template <typename T>
ChannelStats<T> stats_of(const NodeArgs<T>& a, int t, int64_t c0) {
  const int s = a.stat[t];
  if (s < 0) return ChannelStats<T>{nullptr, nullptr};
  return ChannelStats<T>{a.mean + s * a.out.C + c0, a.invstd + s * a.out.C + c0};
}

template <typename T, bool CL>
void forward_stats_impl(const NodeArgs<T>& a, double eps, T* mean, T* invstd) {
  const Geom& o = a.out;
  std::vector<double> partial(static_cast<size_t>(2 * a.n_stats * o.N * o.C));
  at::parallel_for(0, task_count<CL>(o), grain<CL>(o), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(static_cast<size_t>(make_task<CL>(o, 0).size()));
    std::vector<double> s1, s2;
    for (int64_t k = begin; k < end; ++k) {
      const Task<CL> tk = make_task<CL>(o, k);
      for (int t = 0; t < a.n_terms; ++t) {
        const int s = a.stat[t];
        if (s < 0) continue;
        const T* pre = term_run(a, t, tk, buf.data());
        s1.assign(static_cast<size_t>(tk.lanes()), 0.0);
        s2.assign(static_cast<size_t>(tk.lanes()), 0.0);
        double* p1 = s1.data();
        double* p2 = s2.data();
        stream(tk, [&](int64_t i, int64_t c) {
          const double v = pre[i];
          p1[c] += v;
          p2[c] += v * v;
        });
        for (int64_t c = 0; c < tk.lanes(); ++c) {
          double* dst = &partial[2 * ((s * o.N + tk.n) * o.C + tk.c0 + c)];
          dst[0] = p1[c];
          dst[1] = p2[c];
        }
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

template <typename T, bool CL>
void forward_reduce_impl(const NodeArgs<T>& a, T* out) {
  const Geom& o = a.out;
  at::parallel_for(0, task_count<CL>(o), grain<CL>(o), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(static_cast<size_t>(make_task<CL>(o, 0).size()));
    for (int64_t k = begin; k < end; ++k) {
      const Task<CL> tk = make_task<CL>(o, k);
      T* dst = out + tk.offset;
      std::fill(dst, dst + tk.size(), static_cast<T>(0));
      // Term by term: per element acc = 0; acc += w_t * y_t in term order, as the CUDA kernel adds.
      for (int t = 0; t < a.n_terms; ++t) {
        const T wt = a.weights[a.wcol[t]];
        const T* pre = term_run(a, t, tk, buf.data());
        const ChannelStats<T> st = stats_of(a, t, tk.c0);
        if (st.mean) {
          stream(tk, [&](int64_t i, int64_t c) { dst[i] += wt * bn_normalize(pre[i], st.mean[c], st.invstd[c]); });
        } else {
          stream(tk, [&](int64_t i, int64_t) { dst[i] += wt * pre[i]; });
        }
      }
    }
  });
}

template <typename T, bool CL>
void backward_impl(const NodeArgs<T>& a, GradArgs<T> g, T* grad_w) {
  const Geom& o = a.out;
  const int rows = a.n_terms + 1;  // row 0: sum of grad; row 1 + t: sum of grad * y_t
  std::vector<double> partial(static_cast<size_t>(rows * o.N * o.C));
  at::parallel_for(0, task_count<CL>(o), grain<CL>(o), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(static_cast<size_t>(make_task<CL>(o, 0).size()));
    std::vector<double> acc;
    for (int64_t k = begin; k < end; ++k) {
      const Task<CL> tk = make_task<CL>(o, k);
      const T* gr = g.grad + tk.offset;
      for (int r = 0; r < rows; ++r) {
        acc.assign(static_cast<size_t>(tk.lanes()), 0.0);
        double* ac = acc.data();
        if (r == 0) {
          stream(tk, [&](int64_t i, int64_t c) { ac[c] += gr[i]; });
        } else {
          const int t = r - 1;
          const T* pre = term_run(a, t, tk, buf.data());
          const ChannelStats<T> st = stats_of(a, t, tk.c0);
          if (st.mean) {
            stream(tk, [&](int64_t i, int64_t c) {
              ac[c] += static_cast<double>(gr[i]) * bn_normalize(pre[i], st.mean[c], st.invstd[c]);
            });
          } else {
            stream(tk, [&](int64_t i, int64_t c) { ac[c] += static_cast<double>(gr[i]) * pre[i]; });
          }
        }
        for (int64_t c = 0; c < tk.lanes(); ++c) partial[(r * o.N + tk.n) * o.C + tk.c0 + c] = ac[c];
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
  const T* g_mean = means.data();
  const T* gy_mean = means.data() + o.C;

  at::parallel_for(0, task_count<CL>(o), grain<CL>(o), [&](int64_t begin, int64_t end) {
    const int64_t run = make_task<CL>(o, 0).size();
    std::vector<T> buf(static_cast<size_t>(run)), dp(static_cast<size_t>(run));
    std::vector<T> arg(static_cast<size_t>(run));  // max-pool argmax codes (see max_pool3_code)
    int64_t in_h = 0, in_w = 0;
    for (int e = 0; e < a.n_edges; ++e) {
      in_h = std::max(in_h, a.in[e].H);
      in_w = std::max(in_w, a.in[e].W);
    }
    std::vector<int64_t> row_lo(in_h), row_hi(in_h), col_lo(in_w), col_hi(in_w);
    const Geom run_geom = CL ? Geom{1, o.C, o.H, o.W, 0, 1, o.W * o.C, o.C} : Geom{1, 1, o.H, o.W, 0, 0, o.W, 1};
    for (int64_t k = begin; k < end; ++k) {
      const Task<CL> tk = make_task<CL>(o, k);
      const T* gr = g.grad + tk.offset;
      const T* gm = g_mean + tk.c0;
      for (int t = 0; t < a.n_terms; ++t) {
        if (!kind_is_z(a.kind[t])) continue;
        const T wt = a.weights[a.wcol[t]];
        const T* pre = a.z[t] + tk.offset;
        T* dz = g.dz[t] + tk.offset;
        const T* gym = gy_mean + t * o.C + tk.c0;
        const ChannelStats<T> st = stats_of(a, t, tk.c0);
        if (st.mean) {
          stream(tk, [&](int64_t i, int64_t c) {
            const T y = bn_normalize(pre[i], st.mean[c], st.invstd[c]);
            dz[i] = pre_grad(true, wt, st.invstd[c], gr[i], y, gm[c], gym[c]);
          });
        } else {
          stream(tk, [&](int64_t i, int64_t c) { dz[i] = pre_grad(false, wt, T(1), gr[i], pre[i], gm[c], gym[c]); });
        }
      }
      for (int e = 0; e < a.n_edges; ++e) {
        const Geom& gi = a.in[e];
        const int s = a.stride[e];
        T* dx = g.dx[e] + gi.at(tk.n, tk.c0, 0, 0);
        const int64_t in_pixels = gi.H * gi.W;
        for (int64_t p = 0; p < in_pixels; ++p)  // the run of x_e: contiguous in both layouts
          for (int64_t c = 0; c < tk.lanes(); ++c) dx[p * tk.lanes() + c] = 0;
        for (int t = 0; t < a.n_terms; ++t) {
          if (a.edge[t] != e || kind_is_z(a.kind[t])) continue;
          const T wt = a.weights[a.wcol[t]];
          const T* gym = gy_mean + t * o.C + tk.c0;
          if (a.kind[t] == kIdentity) {
            stream(tk, [&](int64_t i, int64_t c) { dx[i] += pre_grad(false, wt, T(1), gr[i], T(0), gm[c], gym[c]); });
            continue;
          }
          const bool is_max = a.kind[t] == kMaxPoolBN;
          load_pool(a, t, tk, buf.data(), is_max ? arg.data() : nullptr);
          const T* pre = buf.data();
          const ChannelStats<T> st = stats_of(a, t, tk.c0);
          for (int64_t h = 0; h < o.H; ++h)
            for (int64_t w = 0; w < o.W; ++w) {
              const T count = is_max ? T(1) : static_cast<T>(pool_count(window_at(h, w, s, gi.H, gi.W)));
              for (int64_t c = 0; c < tk.lanes(); ++c) {
                const int64_t i = (h * o.W + w) * tk.lanes() + c;
                const T y = bn_normalize(pre[i], st.mean[c], st.invstd[c]);
                dp[i] = pre_grad(true, wt, st.invstd[c], gr[i], y, gm[c], gym[c]) / count;
              }
            }
          if (is_max) {
            // The CPU scatters each window's gradient to its argmax (serial within the task, so
            // deterministic; per input the additions come in output order, as the CUDA gather's).
            // max_pool3_code only names positions of the window; checked anyway, since a bad code
            // would write outside dx_e.
            const int64_t lanes = tk.lanes();
            for (int64_t h = 0; h < o.H; ++h)
              for (int64_t w = 0; w < o.W; ++w) {
                const Window v = window_at(h, w, s, gi.H, gi.W);
                const int64_t base_in = (h * s) * gi.sH + (w * s) * gi.sW, base_out = (h * o.W + w) * lanes;
                for (int64_t c = 0; c < lanes; ++c) {
                  const int code = static_cast<int>(arg[base_out + c]);
                  TORCH_CHECK(code_in_window(code, v), "mixed_node: internal error, max-pool argmax code ", code,
                              " outside the window of output (", h, ", ", w, ")");
                  dx[base_in + c * gi.sC + (code / 3 - 1) * gi.sH + (code % 3 - 1) * gi.sW] += dp[base_out + c];
                }
              }
            continue;
          }
          // Average pool: gather the count-divided gradients of the windows covering each input.
          const int64_t lanes = tk.lanes();
          const T* dpp = dp.data();
          if (s == 1) {  // the covering outputs are the window around (i, j): vectorisable
            const int64_t sH = run_geom.sH, sW = CL ? run_geom.sW : 1;
            for_each_window(o, o, 1, [&](int64_t i, int64_t j, Window v) {
              const int64_t base = (i * o.W + j) * lanes;
              for (int64_t c = 0; c < lanes; ++c) dx[base + c] += avg_pool3_grad_s1(dpp + base + c, sH, sW, v);
            });
          } else {  // covering ranges per row and column looked up, not divided out per element
            for (int64_t i = 0; i < gi.H; ++i) covering_outputs(i, s, o.H, &row_lo[i], &row_hi[i]);
            for (int64_t j = 0; j < gi.W; ++j) covering_outputs(j, s, o.W, &col_lo[j], &col_hi[j]);
            for (int64_t i = 0; i < gi.H; ++i)
              for (int64_t j = 0; j < gi.W; ++j) {
                T* d = dx + (i * gi.W + j) * lanes;
                for (int64_t c = 0; c < lanes; ++c)
                  d[c] += avg_pool3_grad_in(dpp, run_geom, 0, c, row_lo[i], row_hi[i], col_lo[j], col_hi[j]);
              }
          }
        }
      }
    }
  });
}

}  // namespace

template <typename T>
void forward_stats_cpu(const NodeArgs<T>& a, double eps, T* mean, T* invstd) {
  if (a.n_stats == 0) return;
  if (is_channels_last(a.out)) {
    forward_stats_impl<T, true>(a, eps, mean, invstd);
  } else {
    forward_stats_impl<T, false>(a, eps, mean, invstd);
  }
}

template <typename T>
void forward_reduce_cpu(const NodeArgs<T>& a, T* out) {
  if (is_channels_last(a.out)) {
    forward_reduce_impl<T, true>(a, out);
  } else {
    forward_reduce_impl<T, false>(a, out);
  }
}

template <typename T>
void backward_cpu(const NodeArgs<T>& a, GradArgs<T> g, T* grad_w) {
  if (is_channels_last(a.out)) {
    backward_impl<T, true>(a, g, grad_w);
  } else {
    backward_impl<T, false>(a, g, grad_w);
  }
}

#define ND_INSTANTIATE(T)                                                          \
  template void forward_stats_cpu<T>(const NodeArgs<T>&, double, T*, T*);          \
  template void forward_reduce_cpu<T>(const NodeArgs<T>&, T*);                     \
  template void backward_cpu<T>(const NodeArgs<T>&, GradArgs<T>, T*);
ND_INSTANTIATE(float)
ND_INSTANTIATE(double)
#undef ND_INSTANTIATE

}  // namespace nasdeploy
