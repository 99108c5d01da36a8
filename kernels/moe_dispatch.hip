// Routed tokens to experts and back, on the device: rows counted per expert, offsets, each
// (token, choice) given a row of the expert-sorted activations, and the weighted sum of the
// experts' outputs per token (choices in the router's ascending expert order, as the CPU
// adds them). CPU twin: backend::cpu::moe::grouped_experts; declared in src/ops/moe_dispatch.rs.
//
//   idx     [n, k] int32   each token's experts (router order)
//   counts  [E] int32      zeroed before kiln_moe_count
//   offsets [E + 1] int32  expert e owns rows offsets[e] .. offsets[e+1] of xs and ys
//   cursor  [E] int32      scratch for kiln_moe_place
//   pos     [n, k] int32   the row of choice (t, j) in xs / ys
#include "compat.h"

// One thread per (token, choice).
KILN_EXPORT void kiln_moe_count(const int* __restrict__ idx, int* __restrict__ counts, int nk) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < nk) atomicAdd(&counts[idx[i]], 1);
}

// One thread.
KILN_EXPORT void kiln_moe_offsets(const int* __restrict__ counts, int* __restrict__ offsets, int* __restrict__ cursor,
                                  int experts) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int acc = 0;
    for (int e = 0; e < experts; ++e) {
        offsets[e] = acc;
        cursor[e] = acc;
        acc += counts[e];
    }
    offsets[experts] = acc;
}

// One thread per (token, choice): a row in its expert's range (in no particular order; each
// row is computed on its own, so the order changes no value).
KILN_EXPORT void kiln_moe_place(const int* __restrict__ idx, int* __restrict__ cursor, int* __restrict__ pos, int nk) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < nk) pos[i] = atomicAdd(&cursor[idx[i]], 1);
}

// x [n, d] -> xs [n * k, d]: xs[pos[t, j]] = x[t]. One thread per (token, choice, column).
KILN_EXPORT void kiln_moe_gather(const float* __restrict__ x, const int* __restrict__ pos, float* __restrict__ xs,
                                 int n, int k, int d) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * k * d) return;
    const long long tj = i / d, c = i % d;
    xs[(long long)pos[tj] * d + c] = x[(tj / k) * d + c];
}

// ys [n * k, d], weights [n, k] -> y [n, d] = sum_j weights[t, j] ys[pos[t, j]], j ascending.
// One thread per (token, column).
KILN_EXPORT void kiln_moe_combine(const float* __restrict__ ys, const int* __restrict__ pos,
                                  const float* __restrict__ weights, float* __restrict__ y, int n, int k, int d) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * d) return;
    const long long t = i / d, c = i % d;
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) acc += weights[t * k + j] * ys[(long long)pos[t * k + j] * d + c];
    y[i] = acc;
}
