// The absorbed MLA's two ends, per head, through kv_b [H * (nope + v), r] (bf16, f32 or
// MXFP4): q_nope folded into latent space, and the latent outputs expanded to values. CPU
// twins: the CPU backend's absorb_query and expand_values; declared in src/ops/mla_heads.rs.
#include "compat.h"

// Element (row, c) of kv_b in its stored format.
template <int FMT>
__device__ inline float kiln_kvb(const void* w, const uint8_t* scales, long long row, int c, int r) {
    if (FMT == 0) return reinterpret_cast<const float*>(w)[row * r + c];
    if (FMT == 1) return kiln_bf16(reinterpret_cast<const uint16_t*>(w)[row * r + c]);
    return kiln_mxfp4_at(reinterpret_cast<const uint8_t*>(w), scales, row, c, r);
}

// q [n, H, nope + rope] -> q_abs [n, H, r]: q_abs[t,h,c] = sum_d q[t,h,d] kv_b[h(nope+v)+d, c],
// d ascending. One thread per (t, h, c).
template <int FMT>
__device__ void kiln_absorb_q(const void* w, const uint8_t* scales, const float* __restrict__ q,
                              float* __restrict__ q_abs, int n, int heads, int nope, int rope, int v, int r) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * heads * r) return;
    const int c = (int)(i % r), h = (int)((i / r) % heads);
    const long long t = i / ((long long)r * heads);
    const float* qh = q + (t * heads + h) * (nope + rope);
    const long long base = (long long)h * (nope + v);
    float acc = 0.0f;
    for (int d = 0; d < nope; ++d) acc += qh[d] * kiln_kvb<FMT>(w, scales, base + d, c, r);
    q_abs[i] = acc;
}

// o_lat [n, H, r] -> out [n, H, v]: out[t,h,j] = kv_b[h(nope+v)+nope+j, :] . o_lat[t,h,:].
// One thread per (t, h, j).
template <int FMT>
__device__ void kiln_expand_v(const void* w, const uint8_t* scales, const float* __restrict__ o_lat,
                              float* __restrict__ out, int n, int heads, int nope, int v, int r) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * heads * v) return;
    const int j = (int)(i % v), h = (int)((i / v) % heads);
    const long long t = i / ((long long)v * heads);
    const float* o = o_lat + (t * heads + h) * r;
    const long long row = (long long)h * (nope + v) + nope + j;
    float acc = 0.0f;
    for (int c = 0; c < r; ++c) acc += kiln_kvb<FMT>(w, scales, row, c, r) * o[c];
    out[i] = acc;
}

#define KILN_MLA_HEADS(NAME, FMT)                                                                                  \
    KILN_EXPORT void kiln_absorb_q_##NAME(const void* w, const uint8_t* scales, const float* q, float* q_abs, int n, \
                                          int heads, int nope, int rope, int v, int r) {                          \
        kiln_absorb_q<FMT>(w, scales, q, q_abs, n, heads, nope, rope, v, r);                                      \
    }                                                                                                              \
    KILN_EXPORT void kiln_expand_v_##NAME(const void* w, const uint8_t* scales, const float* o_lat, float* out,    \
                                          int n, int heads, int nope, int v, int r) {                             \
        kiln_expand_v<FMT>(w, scales, o_lat, out, n, heads, nope, v, r);                                          \
    }

KILN_MLA_HEADS(f32, 0)
KILN_MLA_HEADS(bf16, 1)
KILN_MLA_HEADS(mxfp4, 2)
