// The DSA lightning indexer: scores of each query against every visible cached key, then
// the top-k keys. CPU twin: backend::cpu::score_slots then top_k; declared in src/ops/indexer.rs.
#include "compat.h"

#define KILN_IDX_MAX_Q 8192  // heads x dims of one query

// q [T, HI, DI] f32 (roped), w [T, HI] f32 (already x HI^-0.5), keys: the layer's indexer
// entries in the paged pool (f32: DI f32; bf16: DI bf16; fp8: DI e4m3 + one f32 scale),
// pages [T, max_pages],
// lens [T] -> scores [T, stride] f32 (positions >= lens are -inf).
// Grid: (T, ceil(max len / 256)); block: 256, one key per thread.
template <int FMT>
__device__ void kiln_indexer_scores(const float* __restrict__ q, const float* __restrict__ w,
                                    const uint8_t* __restrict__ keys, const int* __restrict__ pages,
                                    const int* __restrict__ lens, float* __restrict__ scores, int hi, int di,
                                    int entry, int page, int max_pages, int stride, float dot_scale) {
    __shared__ float qs[KILN_IDX_MAX_Q];
    __shared__ float ws[64];
    const int t = blockIdx.x;
    for (int i = threadIdx.x; i < hi * di; i += blockDim.x) qs[i] = q[(size_t)t * hi * di + i];
    for (int i = threadIdx.x; i < hi; i += blockDim.x) ws[i] = w[(size_t)t * hi + i];
    __syncthreads();
    const int s = blockIdx.y * blockDim.x + threadIdx.x;
    if (s >= stride) return;
    if (s >= lens[t]) {
        scores[(size_t)t * stride + s] = -INFINITY;
        return;
    }
    const int sl = pages[(size_t)t * max_pages + s / page] * page + s % page;
    const uint8_t* e = keys + (size_t)sl * entry;
    const float kscale = FMT == 2 ? reinterpret_cast<const float*>(e + di)[0] : 1.0f;
    float total = 0.0f;
    for (int h = 0; h < hi; ++h) {
        float dot = 0.0f;
        for (int i = 0; i < di; ++i) {
            const float k = FMT == 2   ? kiln_e4m3(e[i]) * kscale
                            : FMT == 1 ? kiln_bf16(reinterpret_cast<const uint16_t*>(e)[i])
                                       : reinterpret_cast<const float*>(e)[i];
            dot += qs[h * di + i] * k;
        }
        total += ws[h] * fmaxf(dot * dot_scale, 0.0f);  // ReLU before the head weighting
    }
    scores[(size_t)t * stride + s] = total;
}

KILN_EXPORT void kiln_indexer_scores_f32(const float* q, const float* w, const uint8_t* keys, const int* pages,
                                         const int* lens, float* scores, int hi, int di, int entry, int page,
                                         int max_pages, int stride, float dot_scale) {
    kiln_indexer_scores<0>(q, w, keys, pages, lens, scores, hi, di, entry, page, max_pages, stride, dot_scale);
}

KILN_EXPORT void kiln_indexer_scores_bf16(const float* q, const float* w, const uint8_t* keys, const int* pages,
                                          const int* lens, float* scores, int hi, int di, int entry, int page,
                                          int max_pages, int stride, float dot_scale) {
    kiln_indexer_scores<1>(q, w, keys, pages, lens, scores, hi, di, entry, page, max_pages, stride, dot_scale);
}

KILN_EXPORT void kiln_indexer_scores_fp8(const float* q, const float* w, const uint8_t* keys, const int* pages,
                                         const int* lens, float* scores, int hi, int di, int entry, int page,
                                         int max_pages, int stride, float dot_scale) {
    kiln_indexer_scores<2>(q, w, keys, pages, lens, scores, hi, di, entry, page, max_pages, stride, dot_scale);
}

// Order-preserving map of floats to unsigned ints (larger float -> larger key) under the
// ranking rule of compat.h: -0 keys as +0, NaN keys below every number.
__device__ inline uint32_t kiln_float_key(float f) {
    if (f != f) return 0u;
    const uint32_t u = __float_as_uint(f == 0.0f ? 0.0f : f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Top-k of each row: radix select of the k-th largest key (4 passes of 8 bits over a
// 256-bin histogram), then every index above it and ties in index order (the ranking rule of
// compat.h), placed by a block prefix sum. Rows with at most
// k finite entries keep them all. scores [T, stride], lens [T] -> idx [T, k] (unused = -1),
// in no particular order. Grid: T; block: 256.
KILN_EXPORT void kiln_topk_f32(const float* __restrict__ scores, const int* __restrict__ lens,
                               int* __restrict__ idx, int stride, int k) {
    __shared__ unsigned int hist[256];
    __shared__ uint32_t prefix_s;
    __shared__ int remaining_s;
    __shared__ int count_s;
    __shared__ int scan[1024];  // one per thread (blockDim.x <= 1024)
    const int t = blockIdx.x, n = lens[t];
    const float* row = scores + (size_t)t * stride;
    int* out = idx + (size_t)t * k;
    if (n <= k) {
        for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = i < n ? i : -1;
        return;
    }
    uint32_t prefix = 0;
    int remaining = k;  // how many of the top-k lie at or below the current prefix
    for (int pass = 0; pass < 4; ++pass) {
        const int shift = 24 - 8 * pass;
        const uint32_t mask = pass == 0 ? 0u : (0xFFFFFFFFu << (shift + 8));
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const uint32_t key = kiln_float_key(row[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xFF], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int seen = 0, b = 255;
            for (; b > 0; --b) {
                if (seen + (int)hist[b] >= remaining) break;
                seen += hist[b];
            }
            prefix_s = prefix | ((uint32_t)b << shift);
            remaining_s = remaining - seen;
        }
        __syncthreads();
        prefix = prefix_s;
        remaining = remaining_s;
    }
    // `prefix` is the k-th largest key; `remaining` of the top-k equal it.
    if (threadIdx.x == 0) count_s = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (kiln_float_key(row[i]) > prefix) out[atomicAdd(&count_s, 1)] = i;
    __syncthreads();
    // The ties, lowest indices first: the row in chunks of one entry per thread, each tie's
    // place in its chunk from a block prefix sum, until the top-k is full. `placed` and the
    // loop bounds are the same in every thread, so every thread reaches every barrier.
    const int base = count_s;
    int placed = 0;
    for (int start = 0; start < n && base + placed < k; start += blockDim.x) {
        const int i = start + threadIdx.x;
        const int tie = i < n && kiln_float_key(row[i]) == prefix;
        scan[threadIdx.x] = tie;
        __syncthreads();
        for (int off = 1; off < blockDim.x; off <<= 1) {  // inclusive Hillis-Steele scan
            const int add = threadIdx.x >= off ? scan[threadIdx.x - off] : 0;
            __syncthreads();
            scan[threadIdx.x] += add;
            __syncthreads();
        }
        const int rank = base + placed + scan[threadIdx.x] - tie;
        if (tie && rank < k) out[rank] = i;
        placed += scan[blockDim.x - 1];
        __syncthreads();  // every thread has read scan before the next chunk writes it
    }
}
