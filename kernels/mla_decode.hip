// Absorbed MLA attention over a paged KV pool, for decode (one query per sequence per
// step) and verification steps. CPU twin: backend::cpu::latent_attention per head (declared in
// src/ops/mla_decode.rs), after q_nope is folded through kv_b's key half.
//
//   q_abs  [T, H, R] f32    q_nope @ W_UK per head (R = kv_lora_rank)
//   q_rope [T, H, DR] f32   roped
//   kv     [slots, entry]   the layer's MLA entries: f32 = R + DR f32; bf16 = R + DR bf16;
//                           fp8 = R e4m3, then ceil(R/128) f32 scales, then DR bf16
//                           (src/kv/layout.rs)
//   pages  [T, max_pages]   each query's page table; slot = pages[t / page] * page + t % page
//   lens   [T] int32        keys 0 .. lens-1 are visible (causal)
//   sel    [T, topk] int32  selected key positions (-1 = unused), or null for every visible key
//   out    [T, H, R] f32    sum over keys of softmax(score) * latent
// Grid: (T, H); block: 256 threads.
#include "compat.h"

#define KILN_MLA_CHUNK 256
#define KILN_MLA_MAX_R 1024

// Entry formats: 0 f32, 1 bf16, 2 fp8_e4m3.
template <int FMT>
__device__ inline float kiln_mla_latent(const uint8_t* e, int i, int r) {
    if (FMT == 2) {
        const float* scales = reinterpret_cast<const float*>(e + r);
        return kiln_e4m3(e[i]) * scales[i / 128];
    }
    if (FMT == 0) return reinterpret_cast<const float*>(e)[i];
    return kiln_bf16(reinterpret_cast<const uint16_t*>(e)[i]);
}

template <int FMT>
__device__ inline float kiln_mla_rope(const uint8_t* e, int i, int r) {
    if (FMT == 0) return reinterpret_cast<const float*>(e + 4 * r)[i];
    const uint8_t* rope = FMT == 2 ? e + r + 4 * ((r + 127) / 128) : e + 2 * r;
    return kiln_bf16(reinterpret_cast<const uint16_t*>(rope)[i]);
}

template <int FMT>
__device__ void kiln_mla_decode(const float* __restrict__ q_abs, const float* __restrict__ q_rope,
                                const uint8_t* __restrict__ kv, const int* __restrict__ pages,
                                const int* __restrict__ lens, const int* __restrict__ sel, float* __restrict__ out,
                                int heads, int r, int dr, int entry, int page, int max_pages, int topk, float scale) {
    __shared__ float qa[KILN_MLA_MAX_R];
    __shared__ float qr[128];
    __shared__ float p[KILN_MLA_CHUNK];
    __shared__ int slot[KILN_MLA_CHUNK];
    __shared__ float scratch[32];
    const int t = blockIdx.x, h = blockIdx.y;
    const size_t qi = (size_t)t * heads + h;
    for (int i = threadIdx.x; i < r; i += blockDim.x) qa[i] = q_abs[qi * r + i];
    for (int i = threadIdx.x; i < dr; i += blockDim.x) qr[i] = q_rope[qi * dr + i];
    __syncthreads();
    const int n_keys = sel ? topk : lens[t];
    // Each thread owns output dims threadIdx.x, +blockDim.x, ... (at most 4 for R <= 1024).
    float acc[4] = {0, 0, 0, 0};
    float run_max = -INFINITY, run_sum = 0.0f;
    for (int c0 = 0; c0 < n_keys; c0 += KILN_MLA_CHUNK) {
        const int j = c0 + threadIdx.x;
        float s = -INFINITY;
        int sl = -1;
        if (threadIdx.x < KILN_MLA_CHUNK && j < n_keys) {
            const int key = sel ? sel[(size_t)t * topk + j] : j;
            if (key >= 0 && key < lens[t]) {
                sl = pages[(size_t)t * max_pages + key / page] * page + key % page;
                const uint8_t* e = kv + (size_t)sl * entry;
                float dot = 0.0f;
                for (int i = 0; i < r; ++i) dot += qa[i] * kiln_mla_latent<FMT>(e, i, r);
                for (int i = 0; i < dr; ++i) dot += qr[i] * kiln_mla_rope<FMT>(e, i, r);
                s = dot * scale;
            }
        }
        const float m = fmaxf(run_max, kiln_block_max(s, scratch));
        if (threadIdx.x < KILN_MLA_CHUNK) {
            p[threadIdx.x] = (sl >= 0) ? __expf(s - m) : 0.0f;
            slot[threadIdx.x] = sl;
        }
        const float chunk_sum = kiln_block_sum((threadIdx.x < KILN_MLA_CHUNK) ? p[threadIdx.x] : 0.0f, scratch);
        const float rescale = (run_max == -INFINITY) ? 0.0f : __expf(run_max - m);
        run_sum = run_sum * rescale + chunk_sum;
        run_max = m;
        for (int a = 0; a < 4; ++a) {
            const int i = threadIdx.x + a * blockDim.x;
            if (i >= r) break;
            float v = acc[a] * rescale;
            const int n_chunk = min(KILN_MLA_CHUNK, n_keys - c0);
            for (int q = 0; q < n_chunk; ++q)
                if (slot[q] >= 0) v += p[q] * kiln_mla_latent<FMT>(kv + (size_t)slot[q] * entry, i, r);
            acc[a] = v;
        }
        __syncthreads();
    }
    const float inv = run_sum > 0.0f ? 1.0f / run_sum : 0.0f;
    for (int a = 0; a < 4; ++a) {
        const int i = threadIdx.x + a * blockDim.x;
        if (i < r) out[qi * r + i] = acc[a] * inv;
    }
}

KILN_EXPORT void kiln_mla_decode_f32(const float* q_abs, const float* q_rope, const uint8_t* kv, const int* pages,
                                     const int* lens, const int* sel, float* out, int heads, int r, int dr, int entry,
                                     int page, int max_pages, int topk, float scale) {
    kiln_mla_decode<0>(q_abs, q_rope, kv, pages, lens, sel, out, heads, r, dr, entry, page, max_pages, topk, scale);
}

KILN_EXPORT void kiln_mla_decode_bf16(const float* q_abs, const float* q_rope, const uint8_t* kv, const int* pages,
                                      const int* lens, const int* sel, float* out, int heads, int r, int dr, int entry,
                                      int page, int max_pages, int topk, float scale) {
    kiln_mla_decode<1>(q_abs, q_rope, kv, pages, lens, sel, out, heads, r, dr, entry, page, max_pages, topk, scale);
}

KILN_EXPORT void kiln_mla_decode_fp8(const float* q_abs, const float* q_rope, const uint8_t* kv, const int* pages,
                                     const int* lens, const int* sel, float* out, int heads, int r, int dr, int entry,
                                     int page, int max_pages, int topk, float scale) {
    kiln_mla_decode<2>(q_abs, q_rope, kv, pages, lens, sel, out, heads, r, dr, entry, page, max_pages, topk, scale);
}
