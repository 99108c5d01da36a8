// The step's KV entries into the paged store, in its format. CPU twin:
// kv::KvFormat::encode_mla / encode_index through backend::cpu::HostKvStore; declared in
// src/ops/kv_write.rs. Entry layouts (src/kv/layout.rs):
//   MLA    f32: r + dr f32 | bf16: r + dr bf16 | fp8: r e4m3, ceil(r/128) f32 scales, dr bf16
//   index  f32: di f32     | bf16: di bf16     | fp8: di e4m3, one f32 scale
// An fp8 group's scale is its amax / 448 (1 for an all-zero group).
#include "compat.h"

#define KILN_FP8_GROUP 128

template <int FMT>
__device__ inline void kiln_put(uint8_t* e, int i, float v) {
    if (FMT == 0) reinterpret_cast<float*>(e)[i] = v;
    else reinterpret_cast<uint16_t*>(e)[i] = kiln_to_bf16(v);
}

// latent [n, r], rope [n, dr] f32, slots [n] -> kv [slots, entry]. Grid: n; block: 128.
template <int FMT>
__device__ void kiln_kv_write(const float* __restrict__ latent, const float* __restrict__ rope,
                              const int* __restrict__ slots, uint8_t* __restrict__ kv, int r, int dr, int entry) {
    __shared__ float scratch[32];
    const int t = blockIdx.x;
    uint8_t* e = kv + (size_t)slots[t] * entry;
    const float* lt = latent + (size_t)t * r;
    const float* rt = rope + (size_t)t * dr;
    if (FMT < 2) {
        for (int i = threadIdx.x; i < r; i += blockDim.x) kiln_put<FMT>(e, i, lt[i]);
        for (int i = threadIdx.x; i < dr; i += blockDim.x) kiln_put<FMT>(e, r + i, rt[i]);
        return;
    }
    const int groups = (r + KILN_FP8_GROUP - 1) / KILN_FP8_GROUP;
    float* scales = reinterpret_cast<float*>(e + r);
    for (int g = 0; g < groups; ++g) {
        const int i = g * KILN_FP8_GROUP + threadIdx.x;
        const bool in = threadIdx.x < KILN_FP8_GROUP && i < r;
        const float amax = kiln_block_max(in ? fabsf(lt[i]) : 0.0f, scratch);
        const float s = amax > 0.0f ? amax / 448.0f : 1.0f;
        if (in) e[i] = kiln_to_e4m3(lt[i] / s);
        if (threadIdx.x == 0) scales[g] = s;
    }
    uint16_t* rp = reinterpret_cast<uint16_t*>(e + r + 4 * groups);
    for (int i = threadIdx.x; i < dr; i += blockDim.x) rp[i] = kiln_to_bf16(rt[i]);
}

// key [n, di] f32, slots [n] -> keys [slots, entry]. Grid: n; block: 128.
template <int FMT>
__device__ void kiln_index_write(const float* __restrict__ key, const int* __restrict__ slots,
                                 uint8_t* __restrict__ keys, int di, int entry) {
    __shared__ float scratch[32];
    const int t = blockIdx.x;
    uint8_t* e = keys + (size_t)slots[t] * entry;
    const float* kt = key + (size_t)t * di;
    if (FMT < 2) {
        for (int i = threadIdx.x; i < di; i += blockDim.x) kiln_put<FMT>(e, i, kt[i]);
        return;
    }
    float amax = 0.0f;
    for (int i = threadIdx.x; i < di; i += blockDim.x) amax = fmaxf(amax, fabsf(kt[i]));
    amax = kiln_block_max(amax, scratch);
    const float s = amax > 0.0f ? amax / 448.0f : 1.0f;
    for (int i = threadIdx.x; i < di; i += blockDim.x) e[i] = kiln_to_e4m3(kt[i] / s);
    if (threadIdx.x == 0) reinterpret_cast<float*>(e + di)[0] = s;
}

KILN_EXPORT void kiln_kv_write_f32(const float* latent, const float* rope, const int* slots, uint8_t* kv, int r, int dr,
                                   int entry) {
    kiln_kv_write<0>(latent, rope, slots, kv, r, dr, entry);
}
KILN_EXPORT void kiln_kv_write_bf16(const float* latent, const float* rope, const int* slots, uint8_t* kv, int r,
                                    int dr, int entry) {
    kiln_kv_write<1>(latent, rope, slots, kv, r, dr, entry);
}
KILN_EXPORT void kiln_kv_write_fp8(const float* latent, const float* rope, const int* slots, uint8_t* kv, int r, int dr,
                                   int entry) {
    kiln_kv_write<2>(latent, rope, slots, kv, r, dr, entry);
}
KILN_EXPORT void kiln_index_write_f32(const float* key, const int* slots, uint8_t* keys, int di, int entry) {
    kiln_index_write<0>(key, slots, keys, di, entry);
}
KILN_EXPORT void kiln_index_write_bf16(const float* key, const int* slots, uint8_t* keys, int di, int entry) {
    kiln_index_write<1>(key, slots, keys, di, entry);
}
KILN_EXPORT void kiln_index_write_fp8(const float* key, const int* slots, uint8_t* keys, int di, int entry) {
    kiln_index_write<2>(key, slots, keys, di, entry);
}
