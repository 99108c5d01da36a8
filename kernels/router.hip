// The MoE router in two launches: fp32 logits spread over the GPU, then per token the sigmoid,
// the correction bias used only to choose, group-limited top-k, renormalized and scaled
// weights. CPU twin: backend::cpu::route (src/ops/router.rs).
#include "compat.h"

#define KILN_ROUTER_MAX_EXPERTS 1024

// x [T, D] f32, w [E, D] f32 -> logits [T, E] f32. One wave per (token, expert), lanes split D,
// so the router matrix is read by the whole GPU rather than by one block per token.
// Grid: (ceil(E / waves per block), T); block: a whole number of waves.
KILN_EXPORT void kiln_router_logits(const float* __restrict__ x, const float* __restrict__ w,
                                    float* __restrict__ logits, int d, int e) {
    const int lane = threadIdx.x % KILN_WAVE;
    const int j = blockIdx.x * (blockDim.x / KILN_WAVE) + threadIdx.x / KILN_WAVE;
    const float* xt = x + (size_t)blockIdx.y * d;
    float acc = 0.0f;
    if (j < e)
        for (int c = lane; c < d; c += KILN_WAVE) acc += xt[c] * w[(size_t)j * d + c];
    acc = kiln_wave_sum(acc);  // every lane reaches the shuffles, past-the-end waves too
    if (j < e && lane == 0) logits[(size_t)blockIdx.y * e + j] = acc;
}

// logits [T, E] f32, bias [E] f32 -> idx [T, k] int32 (ascending), weights [T, k] f32.
// One block per token (256 threads); E <= 1024, k <= 16, E % groups == 0, groups <= 64.
KILN_EXPORT void kiln_router_select(const float* __restrict__ logits, const float* __restrict__ bias,
                                    int* __restrict__ idx, float* __restrict__ weights, int e, int k, int groups,
                                    int keep_groups, int normalize, float scaling) {
    __shared__ float score[KILN_ROUTER_MAX_EXPERTS];
    __shared__ float choice[KILN_ROUTER_MAX_EXPERTS];
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    __shared__ int picked[16];
    __shared__ unsigned char taken[KILN_ROUTER_MAX_EXPERTS];
    const int lane = threadIdx.x % KILN_WAVE, wave = threadIdx.x / KILN_WAVE;
    const int waves = blockDim.x / KILN_WAVE;
    const float* lt = logits + (size_t)blockIdx.x * e;
    for (int j = threadIdx.x; j < e; j += blockDim.x) {
        taken[j] = 0;
        const float s = 1.0f / (1.0f + __expf(-lt[j]));
        score[j] = s;
        choice[j] = s + bias[j];
    }
    __syncthreads();
    if (groups > 1) {
        // A group's score is the sum of its two best choices; keep the best keep_groups.
        const int per = e / groups;
        if (threadIdx.x == 0) {
            float gs[64];
            for (int g = 0; g < groups && g < 64; ++g) {
                int a = -1, b = -1;  // the group's best two, by the ranking rule
                for (int j = g * per; j < (g + 1) * per; ++j) {
                    if (a < 0 || kiln_ranks_before(choice[j], j, choice[a], a)) {
                        b = a;
                        a = j;
                    } else if (b < 0 || kiln_ranks_before(choice[j], j, choice[b], b)) {
                        b = j;
                    }
                }
                gs[g] = choice[a] + (b >= 0 ? choice[b] : 0.0f);
            }
            for (int g = 0; g < groups && g < 64; ++g) {
                int rank = 0;
                for (int h = 0; h < groups && h < 64; ++h) rank += kiln_ranks_before(gs[h], h, gs[g], g);
                if (rank >= keep_groups)
                    for (int j = 0; j < per; ++j) choice[g * per + j] = -INFINITY;
            }
        }
        __syncthreads();
    }
    // Top-k by k rounds of a block arg-best under the ranking rule; a taken expert is out of
    // every later round (a flag, not a value, so NaN and -inf choices stay distinct).
    for (int r = 0; r < k; ++r) {
        float v = NAN;
        int vi = 0x7fffffff;  // ranks after every real candidate
        for (int j = threadIdx.x; j < e; j += blockDim.x)
            if (!taken[j] && kiln_ranks_before(choice[j], j, v, vi)) {
                v = choice[j];
                vi = j;
            }
        for (int m = KILN_WAVE / 2; m > 0; m >>= 1) {
            const float ov = kiln_shfl_xor(v, m);
            const int oi = kiln_shfl_xor_int(vi, m);
            if (kiln_ranks_before(ov, oi, v, vi)) {
                v = ov;
                vi = oi;
            }
        }
        if (lane == 0) {
            best_v[wave] = v;
            best_i[wave] = vi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int q = 1; q < waves; ++q)
                if (kiln_ranks_before(best_v[q], best_i[q], best_v[0], best_i[0])) {
                    best_v[0] = best_v[q];
                    best_i[0] = best_i[q];
                }
            picked[r] = best_i[0];
            taken[best_i[0]] = 1;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        // Ascending expert order, as the CPU twin reports them.
        for (int a = 1; a < k; ++a)
            for (int b = a; b > 0 && picked[b - 1] > picked[b]; --b) {
                const int t = picked[b];
                picked[b] = picked[b - 1];
                picked[b - 1] = t;
            }
        float sum = 0.0f;
        for (int a = 0; a < k; ++a) sum += score[picked[a]];
        const float norm = normalize ? 1.0f / (sum + 1e-20f) : 1.0f;
        for (int a = 0; a < k; ++a) {
            idx[(size_t)blockIdx.x * k + a] = picked[a];
            weights[(size_t)blockIdx.x * k + a] = score[picked[a]] * norm * scaling;
        }
    }
}
