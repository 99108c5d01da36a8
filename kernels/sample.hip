// Choosing next tokens on the device: greedy, and temperature + top-p with a given uniform
// draw (the host keeps the seeded random stream). CPU twin: sample::argmax and
// sample::Sampler::distribution walked by sample::draw_at (src/ops/sample.rs).
#include "compat.h"

// logits [T, V] -> out [T]: the first logit under the ranking rule of compat.h. Grid: T; block: 256.
KILN_EXPORT void kiln_sample_greedy(const float* __restrict__ logits, int* __restrict__ out, int v) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    const float* row = logits + (size_t)blockIdx.x * v;
    float best = NAN;
    int besti = 0x7fffffff;  // ranks after every real candidate
    for (int i = threadIdx.x; i < v; i += blockDim.x)
        if (kiln_ranks_before(row[i], i, best, besti)) { best = row[i]; besti = i; }
    for (int m = KILN_WAVE / 2; m > 0; m >>= 1) {
        const float ov = kiln_shfl_xor(best, m);
        const int oi = kiln_shfl_xor_int(besti, m);
        if (kiln_ranks_before(ov, oi, best, besti)) { best = ov; besti = oi; }
    }
    const int lane = threadIdx.x % KILN_WAVE, wave = threadIdx.x / KILN_WAVE;
    if (lane == 0) { bv[wave] = best; bi[wave] = besti; }
    __syncthreads();
    if (threadIdx.x == 0) {
        const int waves = blockDim.x / KILN_WAVE;
        for (int q = 1; q < waves; ++q)
            if (kiln_ranks_before(bv[q], bi[q], bv[0], bi[0])) { bv[0] = bv[q]; bi[0] = bi[q]; }
        out[blockIdx.x] = bi[0];
    }
}

// Temperature + top-p: keeps the tokens whose probability is at least a threshold found by
// bisection so that their mass reaches top_p, then walks them in index order to the draw
// u [T] in [0, 1). Grid: T; block: 256.
KILN_EXPORT void kiln_sample_top_p(const float* __restrict__ logits, const float* __restrict__ u,
                                   int* __restrict__ out, int v, float temperature, float top_p) {
    __shared__ float scratch[32];
    const float* row = logits + (size_t)blockIdx.x * v;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, row[i]);
    m = kiln_block_max(m, scratch);
    float z = 0.0f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) z += __expf((row[i] - m) / temperature);
    z = kiln_block_sum(z, scratch);
    // Bisection on the probability threshold: the largest t whose kept mass >= top_p.
    float lo = 0.0f, hi = 1.0f;
    for (int it = 0; it < 24; ++it) {
        const float mid = 0.5f * (lo + hi);
        float mass = 0.0f;
        for (int i = threadIdx.x; i < v; i += blockDim.x) {
            const float p = __expf((row[i] - m) / temperature) / z;
            if (p >= mid) mass += p;
        }
        mass = kiln_block_sum(mass, scratch);
        if (mass >= top_p) lo = mid; else hi = mid;
    }
    if (threadIdx.x == 0) {
        float kept = 0.0f;
        for (int i = 0; i < v; ++i) {
            const float p = __expf((row[i] - m) / temperature) / z;
            if (p >= lo) kept += p;
        }
        float target = u[blockIdx.x] * kept;
        int pick = -1;
        for (int i = 0; i < v; ++i) {
            const float p = __expf((row[i] - m) / temperature) / z;
            if (p < lo) continue;
            pick = i;
            if (target < p) break;
            target -= p;
        }
        out[blockIdx.x] = pick;
    }
}
