// CUDA launchers over the per-element bodies of mixed_node.h. No torch headers: the glue in
// mixed_node_ops.cpp hands over raw pointers, scratch space and the current stream.
// Deterministic: every reduction is a fixed-shape tree in shared memory followed by a serial sum
// over the batch; no atomics.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "mixed_node_launch.h"

namespace nasdeploy {
namespace {

constexpr int kThreads = 256;

static_assert(sizeof(NodeArgs<double>) + sizeof(GradArgs<double>) + 64 <= 4096,
              "kernel arguments must fit the 4 KiB parameter space");

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

__device__ __forceinline__ void block_sum2(double* a, double* b) {
  __shared__ double sa[kThreads], sb[kThreads];
  const int tid = threadIdx.x;
  sa[tid] = *a;
  sb[tid] = *b;
  __syncthreads();
  for (int off = kThreads / 2; off > 0; off >>= 1) {
    if (tid < off) {
      sa[tid] += sa[tid + off];
      sb[tid] += sb[tid + off];
    }
    __syncthreads();
  }
  *a = sa[0];
  *b = sb[0];
}

// grid (N * C, n_stats): sum and sum of squares of one stat term over one (n, c) plane.
template <typename T>
__global__ void fwd_stats_kernel(NodeArgs<T> a, double* partial) {
  const Geom& o = a.out;
  const int64_t n = blockIdx.x / o.C, c = blockIdx.x % o.C;
  const int s = blockIdx.y;
  int t = 0;
  while (a.stat[t] != s) ++t;
  double sum = 0, sumsq = 0;
  for (int64_t k = threadIdx.x; k < o.H * o.W; k += kThreads) {
    const double v = term_pre(a, t, n, c, k / o.W, k % o.W);
    sum += v;
    sumsq += v * v;
  }
  block_sum2(&sum, &sumsq);
  if (threadIdx.x == 0) {
    double* dst = partial + 2 * ((s * o.N + n) * o.C + c);
    dst[0] = sum;
    dst[1] = sumsq;
  }
}

template <typename T>
__global__ void fwd_finish_kernel(NodeArgs<T> a, const double* partial, double eps, T* mean, T* invstd) {
  const Geom& o = a.out;
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= a.n_stats * o.C) return;
  const int64_t s = i / o.C, c = i % o.C;
  double sum = 0, sumsq = 0;
  for (int64_t n = 0; n < o.N; ++n) {
    sum += partial[2 * ((s * o.N + n) * o.C + c)];
    sumsq += partial[2 * ((s * o.N + n) * o.C + c) + 1];
  }
  finish_moments(sum, sumsq, static_cast<double>(o.N * o.H * o.W), eps, &mean[i], &invstd[i]);
}

// The node-level weighted reduction, every term in one launch. Each thread owns kElems elements a
// block apart (coalesced), so every term issues kElems independent loads. Per element:
// acc = 0; acc += w_t * y_t for t in order, as the CPU launcher adds (deterministic).
constexpr int kElems = 4;

template <typename T>
__global__ void fwd_reduce_kernel(NodeArgs<T> a, T* out) {
  const int64_t total = a.out.numel();
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x * kElems;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * kElems + threadIdx.x; base < total;
       base += step) {
    int64_t n[kElems], c[kElems], h[kElems], w[kElems];
    T acc[kElems];
#pragma unroll
    for (int j = 0; j < kElems; ++j) {
      const int64_t idx = base + static_cast<int64_t>(j) * blockDim.x;
      unravel(a.out, idx < total ? idx : total - 1, &n[j], &c[j], &h[j], &w[j]);
      acc[j] = 0;
    }
    for (int t = 0; t < a.n_terms; ++t) {
      const T wt = a.weights[a.wcol[t]];
#pragma unroll
      for (int j = 0; j < kElems; ++j) acc[j] += wt * term_value(a, t, n[j], c[j], h[j], w[j]);
    }
#pragma unroll
    for (int j = 0; j < kElems; ++j)
      if (base + static_cast<int64_t>(j) * blockDim.x < total) out[a.out.at(n[j], c[j], h[j], w[j])] = acc[j];
  }
}

// grid (N * C, n_terms + 1): row 0 sums grad, row 1 + t sums grad * y_t, over one plane.
template <typename T>
__global__ void bwd_stats_kernel(NodeArgs<T> a, const T* grad, double* partial) {
  const Geom& o = a.out;
  const int64_t n = blockIdx.x / o.C, c = blockIdx.x % o.C;
  const int r = blockIdx.y;
  double sum = 0, unused = 0;
  for (int64_t k = threadIdx.x; k < o.H * o.W; k += kThreads) {
    const int64_t h = k / o.W, w = k % o.W;
    const double g = grad[o.at(n, c, h, w)];
    sum += r == 0 ? g : g * term_value(a, r - 1, n, c, h, w);
  }
  block_sum2(&sum, &unused);
  if (threadIdx.x == 0) partial[(r * o.N + n) * o.C + c] = sum;
}

// One thread per row: per-channel means of the row and, for term rows, the weight gradient.
template <typename T>
__global__ void bwd_finish_kernel(NodeArgs<T> a, const double* partial, T* means, T* grad_w) {
  const Geom& o = a.out;
  const int r = threadIdx.x;
  if (r > a.n_terms) return;
  const double count = static_cast<double>(o.N * o.H * o.W);
  double total = 0;
  for (int64_t c = 0; c < o.C; ++c) {
    double sum = 0;
    for (int64_t n = 0; n < o.N; ++n) sum += partial[(r * o.N + n) * o.C + c];
    means[r * o.C + c] = static_cast<T>(sum / count);
    total += sum;
  }
  if (r > 0) grad_w[a.wcol[r - 1]] = static_cast<T>(total);
}

// Per output element: dL/dz of z terms, and the pool outputs' gradients (+ argmax) for the gather.
template <typename T>
__global__ void bwd_elem_kernel(NodeArgs<T> a, GradArgs<T> g) {
  const int64_t total = a.out.numel();
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, h, w;
    unravel(a.out, idx, &n, &c, &h, &w);
    backward_output_element(a, g, n, c, h, w);
  }
}

// grid (blocks, n_edges): dL/dx_e at each input element.
template <typename T>
__global__ void bwd_gather_kernel(NodeArgs<T> a, GradArgs<T> g) {
  const int e = blockIdx.y;
  const Geom& gi = a.in[e];
  const int64_t total = gi.numel();
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, i, j;
    unravel(gi, idx, &n, &c, &i, &j);
    g.dx[e][gi.at(n, c, i, j)] = backward_input_element(a, g, e, n, c, i, j);
  }
}

int elementwise_blocks(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

}  // namespace

template <typename T>
void forward_stats_cuda(const NodeArgs<T>& a, double eps, T* mean, T* invstd, CudaScratch scratch, void* stream) {
  if (a.n_stats == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(a.out.N * a.out.C), static_cast<unsigned>(a.n_stats));
  fwd_stats_kernel<T><<<grid, kThreads, 0, st>>>(a, scratch.partial);
  check_launch("mixed-node forward statistics");
  const int64_t n = a.n_stats * a.out.C;
  fwd_finish_kernel<T><<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, st>>>(a, scratch.partial, eps, mean, invstd);
  check_launch("mixed-node forward statistics (finish)");
}

template <typename T>
void forward_reduce_cuda(const NodeArgs<T>& a, T* out, void* stream) {
  const int64_t per_block = static_cast<int64_t>(kThreads) * kElems;
  const int64_t blocks = (a.out.numel() + per_block - 1) / per_block;
  fwd_reduce_kernel<T><<<static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8), kThreads, 0,
                         static_cast<cudaStream_t>(stream)>>>(a, out);
  check_launch("mixed-node reduction");
}

template <typename T>
void backward_cuda(const NodeArgs<T>& a, GradArgs<T> g, T* grad_w, CudaScratch scratch, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int rows = a.n_terms + 1;
  const dim3 grid(static_cast<unsigned>(a.out.N * a.out.C), static_cast<unsigned>(rows));
  bwd_stats_kernel<T><<<grid, kThreads, 0, st>>>(a, g.grad, scratch.partial);
  check_launch("mixed-node backward statistics");
  T* means = static_cast<T*>(scratch.means);
  bwd_finish_kernel<T><<<1, 64, 0, st>>>(a, scratch.partial, means, grad_w);
  check_launch("mixed-node backward statistics (finish)");
  g.g_mean = means;
  g.gy_mean = means + a.out.C;
  bwd_elem_kernel<T><<<elementwise_blocks(a.out.numel()), kThreads, 0, st>>>(a, g);
  check_launch("mixed-node backward element pass");
  int64_t largest = 0;
  for (int e = 0; e < a.n_edges; ++e) largest = a.in[e].numel() > largest ? a.in[e].numel() : largest;
  const dim3 ggrid(static_cast<unsigned>(elementwise_blocks(largest)), static_cast<unsigned>(a.n_edges));
  bwd_gather_kernel<T><<<ggrid, kThreads, 0, st>>>(a, g);
  check_launch("mixed-node backward gather");
}

#define ND_INSTANTIATE(T)                                                                             \
  template void forward_stats_cuda<T>(const NodeArgs<T>&, double, T*, T*, CudaScratch, void*);        \
  template void forward_reduce_cuda<T>(const NodeArgs<T>&, T*, void*);                                \
  template void backward_cuda<T>(const NodeArgs<T>&, GradArgs<T>, T*, CudaScratch, void*);
ND_INSTANTIATE(float)
ND_INSTANTIATE(double)
#undef ND_INSTANTIATE

}  // namespace nasdeploy
