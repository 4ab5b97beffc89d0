// Launchers of the fused mixed-node kernels (CPU: mixed_node_cpu.cpp, CUDA: mixed_node_cuda.cu).
// Torch-free on purpose: the CUDA file compiles with nvcc alone, quickly, and fails CI when broken.
#pragma once

#include "mixed_node.h"

namespace nasdeploy {

// Forward, pass 1: batch mean / invstd of every term with statistics.
template <typename T>
void forward_stats_cpu(const NodeArgs<T>& a, double eps, T* mean, T* invstd);
// Forward, pass 2: the weighted reduction over all terms (reads a.mean / a.invstd).
template <typename T>
void forward_reduce_cpu(const NodeArgs<T>& a, T* out);
// Backward: dL/d z, dL/d x (in-kernel terms) and dL/d weights (zeros outside the terms' columns).
template <typename T>
void backward_cpu(const NodeArgs<T>& a, GradArgs<T> g, T* grad_w);

// The CUDA launchers' per-element bodies and buffers, run serially on the CPU
// (mixed_node_emulate.cpp; selected with NASDEPLOY_EMULATE_CUDA=1, for tests without a GPU).
template <typename T>
void forward_emulated(const NodeArgs<T>& a, double eps, T* mean, T* invstd, T* out);
template <typename T>
void backward_emulated(const NodeArgs<T>& a, GradArgs<T> g, T* grad_w);

struct CudaScratch {
  double* partial;  // forward: 2 * n_stats * N * C; backward: (n_terms + 1) * N * C doubles
  void* means;      // backward: (n_terms + 1) * C values of T
};

template <typename T>
void forward_stats_cuda(const NodeArgs<T>& a, double eps, T* mean, T* invstd, CudaScratch scratch, void* stream);
template <typename T>
void forward_reduce_cuda(const NodeArgs<T>& a, T* out, void* stream);
template <typename T>
void backward_cuda(const NodeArgs<T>& a, GradArgs<T> g, T* grad_w, CudaScratch scratch, void* stream);

// Space the launchers need for CudaScratch, in doubles and in values of T.
inline int64_t scratch_partial_doubles(const Geom& out, int n_stats, int n_terms) {
  const int64_t rows = 2 * n_stats > n_terms + 1 ? 2 * n_stats : n_terms + 1;
  return rows * out.N * out.C;
}

}  // namespace nasdeploy
