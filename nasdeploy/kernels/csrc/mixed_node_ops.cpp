// torch.library registration of the fused mixed-node operators (CPU, and CUDA when built with
// NASDEPLOY_WITH_CUDA). Autograd and the fake (meta) kernels are registered from Python.
//
//   mixed_node_fwd(xs, edge_strides, zs, weights, kinds, edges, wcols, eps) -> (out, mean, invstd)
//   mixed_node_bwd(grad, xs, edge_strides, zs, weights, kinds, edges, wcols, mean, invstd)
//       -> (grad_xs, grad_zs, grad_weights)
//
// Term t has kind kinds[t] (see mixed_node.h), reads edge input xs[edges[t]], and weight
// weights.view(-1)[wcols[t]]; the kRaw / kBatchNorm terms take zs in order. All tensors are brought
// to one memory format: channels-last when the first z (else the first x) is channels-last, else NCHW.
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef NASDEPLOY_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "mixed_node_launch.h"

namespace nasdeploy {
namespace {

using at::Tensor;

at::MemoryFormat pick_format(const Tensor& ref) {
  return !ref.is_contiguous() && ref.is_contiguous(at::MemoryFormat::ChannelsLast) ? at::MemoryFormat::ChannelsLast
                                                                                    : at::MemoryFormat::Contiguous;
}

Geom geom_of(const Tensor& t) {
  return Geom{t.size(0), t.size(1), t.size(2), t.size(3), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

int64_t pooled(int64_t size, int64_t stride) { return (size - 1) / stride + 1; }

// Validated inputs, all in one memory format.
struct Plan {
  std::vector<Tensor> xs, zs;
  Tensor weights;
  at::MemoryFormat fmt;
  std::vector<int64_t> out_size;
  std::vector<int32_t> stat;  // stat row per term, -1 without statistics
  int n_stats = 0;
};

Plan make_plan(at::TensorList xs, at::IntArrayRef strides, at::TensorList zs, const Tensor& weights,
               at::IntArrayRef kinds, at::IntArrayRef edges, at::IntArrayRef wcols) {
  const int64_t n_edges = static_cast<int64_t>(xs.size()), n_terms = static_cast<int64_t>(kinds.size());
  TORCH_CHECK(n_edges >= 1 && n_edges <= kMaxEdges, "mixed_node: needs 1 to ", kMaxEdges, " edges, got ", n_edges);
  TORCH_CHECK(n_terms >= 1 && n_terms <= kMaxTerms, "mixed_node: needs 1 to ", kMaxTerms, " terms, got ", n_terms);
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == n_edges, "mixed_node: one stride per edge expected");
  TORCH_CHECK(static_cast<int64_t>(edges.size()) == n_terms && static_cast<int64_t>(wcols.size()) == n_terms,
              "mixed_node: kinds, edges and wcols must have one entry per term");
  const Tensor& ref = zs.empty() ? xs[0] : zs[0];
  const auto dtype = ref.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "mixed_node: float32 or float64 tensors expected, got ",
              dtype);
  Plan p;
  p.fmt = pick_format(ref);
  auto prepare = [&](const Tensor& t, const char* what) {
    TORCH_CHECK(t.dim() == 4, "mixed_node: ", what, " must be 4-D (N, C, H, W), got ", t.dim(), "-D");
    TORCH_CHECK(t.scalar_type() == dtype, "mixed_node: ", what, " has dtype ", t.scalar_type(), ", expected ", dtype);
    TORCH_CHECK(t.device() == ref.device(), "mixed_node: ", what, " is on ", t.device(), ", expected ", ref.device());
    return t.contiguous(p.fmt);
  };
  for (const Tensor& x : xs) p.xs.push_back(prepare(x, "an edge input"));
  for (const Tensor& z : zs) p.zs.push_back(prepare(z, "an op output"));
  TORCH_CHECK(weights.scalar_type() == dtype && weights.device() == ref.device(),
              "mixed_node: weights must match the inputs' dtype and device");
  p.weights = weights.contiguous();

  const Tensor& x0 = p.xs[edges.empty() ? 0 : edges[0]];
  if (!p.zs.empty()) {
    p.out_size = p.zs[0].sizes().vec();
  } else {
    TORCH_CHECK(edges[0] >= 0 && edges[0] < n_edges, "mixed_node: term edge out of range");
    const int64_t s = strides[edges[0]];
    p.out_size = {x0.size(0), x0.size(1), pooled(x0.size(2), s), pooled(x0.size(3), s)};
  }
  int64_t n_z = 0;
  for (int64_t t = 0; t < n_terms; ++t) {
    const int64_t kind = kinds[t], e = edges[t];
    TORCH_CHECK(kind >= kRaw && kind <= kIdentity, "mixed_node: unknown term kind ", kind);
    TORCH_CHECK(e >= 0 && e < n_edges, "mixed_node: term ", t, " names edge ", e, " of ", n_edges);
    TORCH_CHECK(wcols[t] >= 0 && wcols[t] < p.weights.numel(), "mixed_node: term ", t, " weight index out of range");
    p.stat.push_back(kind_has_stats(static_cast<int32_t>(kind)) ? p.n_stats++ : -1);
    if (kind_is_z(static_cast<int32_t>(kind))) {
      TORCH_CHECK(n_z < static_cast<int64_t>(p.zs.size()), "mixed_node: more z terms than op outputs");
      TORCH_CHECK(p.zs[n_z].sizes().vec() == p.out_size, "mixed_node: op output ", n_z, " has shape ",
                  p.zs[n_z].sizes(), ", expected ", at::IntArrayRef(p.out_size));
      ++n_z;
      continue;
    }
    const Tensor& x = p.xs[e];
    const int64_t s = strides[e];
    TORCH_CHECK(s >= 1, "mixed_node: edge strides must be positive");
    TORCH_CHECK(kind != kIdentity || s == 1, "mixed_node: identity terms need stride 1 (edge ", e, ")");
    const std::vector<int64_t> expect = {x.size(0), x.size(1), pooled(x.size(2), s), pooled(x.size(3), s)};
    TORCH_CHECK(expect == p.out_size, "mixed_node: edge ", e, " of shape ", x.sizes(), " at stride ", s,
                " does not give the node shape ", at::IntArrayRef(p.out_size));
  }
  TORCH_CHECK(n_z == static_cast<int64_t>(p.zs.size()), "mixed_node: ", p.zs.size(), " op outputs for ", n_z,
              " z terms");
  return p;
}

template <typename T>
NodeArgs<T> make_args(const Plan& p, at::IntArrayRef strides, at::IntArrayRef kinds, at::IntArrayRef edges,
                      at::IntArrayRef wcols, const Tensor& mean, const Tensor& invstd) {
  NodeArgs<T> a{};
  a.n_edges = static_cast<int32_t>(p.xs.size());
  a.n_terms = static_cast<int32_t>(kinds.size());
  a.n_stats = p.n_stats;
  const int64_t N = p.out_size[0], C = p.out_size[1], H = p.out_size[2], W = p.out_size[3];
  a.out = p.fmt == at::MemoryFormat::ChannelsLast ? Geom{N, C, H, W, H * W * C, 1, W * C, C}
                                                  : Geom{N, C, H, W, C * H * W, H * W, W, 1};
  for (int e = 0; e < a.n_edges; ++e) {
    a.in[e] = geom_of(p.xs[e]);
    a.stride[e] = static_cast<int32_t>(strides[e]);
    a.x[e] = p.xs[e].data_ptr<T>();
  }
  int n_z = 0;
  for (int t = 0; t < a.n_terms; ++t) {
    a.kind[t] = static_cast<int32_t>(kinds[t]);
    a.edge[t] = static_cast<int32_t>(edges[t]);
    a.wcol[t] = static_cast<int32_t>(wcols[t]);
    a.stat[t] = p.stat[t];
    a.z[t] = kind_is_z(a.kind[t]) ? p.zs[n_z++].data_ptr<T>() : nullptr;
  }
  a.weights = p.weights.data_ptr<T>();
  a.mean = mean.defined() && mean.numel() ? mean.data_ptr<T>() : nullptr;
  a.invstd = invstd.defined() && invstd.numel() ? invstd.data_ptr<T>() : nullptr;
  return a;
}

// Tests set NASDEPLOY_EMULATE_CUDA=1 to run the CUDA code paths serially on the CPU.
bool emulate_cuda() {
  const char* v = std::getenv("NASDEPLOY_EMULATE_CUDA");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

#ifdef NASDEPLOY_WITH_CUDA
void* current_stream(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }
#endif

std::tuple<Tensor, Tensor, Tensor> mixed_node_fwd(at::TensorList xs, at::IntArrayRef strides, at::TensorList zs,
                                                  const Tensor& weights, at::IntArrayRef kinds, at::IntArrayRef edges,
                                                  at::IntArrayRef wcols, double eps) {
  const Plan p = make_plan(xs, strides, zs, weights, kinds, edges, wcols);
  const auto opts = p.xs[0].options();
  Tensor out = at::empty(p.out_size, opts.memory_format(p.fmt));
  Tensor mean = at::empty({p.n_stats, p.out_size[1]}, opts);
  Tensor invstd = at::empty({p.n_stats, p.out_size[1]}, opts);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "mixed_node_fwd", [&] {
    NodeArgs<scalar_t> a = make_args<scalar_t>(p, strides, kinds, edges, wcols, mean, invstd);
    if (out.is_cuda()) {
#ifdef NASDEPLOY_WITH_CUDA
      const c10::cuda::CUDAGuard guard(out.device());
      Tensor partial = at::empty({scratch_partial_doubles(a.out, a.n_stats, a.n_terms)}, opts.dtype(at::kDouble));
      CudaScratch scratch{partial.data_ptr<double>(), nullptr};
      forward_stats_cuda<scalar_t>(a, eps, mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>(), scratch,
                                   current_stream(out));
      forward_reduce_cuda<scalar_t>(a, out.data_ptr<scalar_t>(), current_stream(out));
#else
      TORCH_CHECK(false, "mixed_node: this build of the extension has no CUDA kernels");
#endif
    } else if (emulate_cuda()) {
      forward_emulated<scalar_t>(a, eps, mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>(),
                                 out.data_ptr<scalar_t>());
    } else {
      forward_stats_cpu<scalar_t>(a, eps, mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>());
      forward_reduce_cpu<scalar_t>(a, out.data_ptr<scalar_t>());
    }
  });
  return {out, mean, invstd};
}

std::tuple<std::vector<Tensor>, std::vector<Tensor>, Tensor> mixed_node_bwd(
    const Tensor& grad, at::TensorList xs, at::IntArrayRef strides, at::TensorList zs, const Tensor& weights,
    at::IntArrayRef kinds, at::IntArrayRef edges, at::IntArrayRef wcols, const Tensor& mean, const Tensor& invstd) {
  const Plan p = make_plan(xs, strides, zs, weights, kinds, edges, wcols);
  TORCH_CHECK(grad.sizes().vec() == p.out_size, "mixed_node: gradient has shape ", grad.sizes(), ", expected ",
              at::IntArrayRef(p.out_size));
  const Tensor g = grad.to(p.xs[0].scalar_type()).contiguous(p.fmt);
  const Tensor m = mean.contiguous(), is = invstd.contiguous();
  TORCH_CHECK(m.dim() == 2 && m.size(0) == p.n_stats && m.size(1) == p.out_size[1] && is.sizes() == m.sizes(),
              "mixed_node: mean/invstd must be [n_stats, C]");
  std::vector<Tensor> grad_xs, grad_zs;
  for (const Tensor& x : p.xs) grad_xs.push_back(at::empty_like(x, at::TensorOptions(), p.fmt));
  for (const Tensor& z : p.zs) grad_zs.push_back(at::empty_like(z, at::TensorOptions(), p.fmt));
  Tensor grad_w = at::zeros_like(p.weights);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "mixed_node_bwd", [&] {
    NodeArgs<scalar_t> a = make_args<scalar_t>(p, strides, kinds, edges, wcols, m, is);
    GradArgs<scalar_t> ga{};
    ga.grad = g.data_ptr<scalar_t>();
    int n_z = 0;
    for (int t = 0; t < a.n_terms; ++t)
      if (kind_is_z(a.kind[t])) ga.dz[t] = grad_zs[n_z++].data_ptr<scalar_t>();
    for (int e = 0; e < a.n_edges; ++e) ga.dx[e] = grad_xs[e].data_ptr<scalar_t>();
    if (g.is_cuda()) {
#ifdef NASDEPLOY_WITH_CUDA
      const c10::cuda::CUDAGuard guard(g.device());
      const auto opts = g.options();
      std::vector<Tensor> keep;
      for (int t = 0; t < a.n_terms; ++t) {
        if (!kind_is_pool(a.kind[t])) continue;
        keep.push_back(at::empty(p.out_size, opts.memory_format(p.fmt)));
        ga.dp[t] = keep.back().data_ptr<scalar_t>();
        if (a.kind[t] == kMaxPoolBN) {
          keep.push_back(at::empty(p.out_size, opts.dtype(at::kByte).memory_format(p.fmt)));
          ga.arg[t] = keep.back().data_ptr<uint8_t>();
        }
      }
      Tensor partial = at::empty({scratch_partial_doubles(a.out, a.n_stats, a.n_terms)}, opts.dtype(at::kDouble));
      Tensor means = at::empty({(a.n_terms + 1) * a.out.C}, opts);
      CudaScratch scratch{partial.data_ptr<double>(), means.data_ptr<scalar_t>()};
      backward_cuda<scalar_t>(a, ga, grad_w.data_ptr<scalar_t>(), scratch, current_stream(g));
#else
      TORCH_CHECK(false, "mixed_node: this build of the extension has no CUDA kernels");
#endif
    } else if (emulate_cuda()) {
      backward_emulated<scalar_t>(a, ga, grad_w.data_ptr<scalar_t>());
    } else {
      backward_cpu<scalar_t>(a, ga, grad_w.data_ptr<scalar_t>());
    }
  });
  return {grad_xs, grad_zs, grad_w};
}

}  // namespace
}  // namespace nasdeploy

TORCH_LIBRARY(nasdeploy, m) {
  m.def(
      "mixed_node_fwd(Tensor[] xs, int[] edge_strides, Tensor[] zs, Tensor weights, int[] kinds, int[] edges, "
      "int[] wcols, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "mixed_node_bwd(Tensor grad, Tensor[] xs, int[] edge_strides, Tensor[] zs, Tensor weights, int[] kinds, "
      "int[] edges, int[] wcols, Tensor mean, Tensor invstd) -> (Tensor[], Tensor[], Tensor)");
}

TORCH_LIBRARY_IMPL(nasdeploy, CPU, m) {
  m.impl("mixed_node_fwd", &nasdeploy::mixed_node_fwd);
  m.impl("mixed_node_bwd", &nasdeploy::mixed_node_bwd);
}

#ifdef NASDEPLOY_WITH_CUDA
TORCH_LIBRARY_IMPL(nasdeploy, CUDA, m) {
  m.impl("mixed_node_fwd", &nasdeploy::mixed_node_fwd);
  m.impl("mixed_node_bwd", &nasdeploy::mixed_node_bwd);
}
#endif
