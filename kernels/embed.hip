// Embedding rows for the step's tokens. CPU twin: backend::cpu's embed (weights::Linear
// row_into); declared in src/ops/embed.rs.
#include "compat.h"

// table [V, d] (bf16 or f32), tokens [n] int32 -> y [n, d] f32. One thread per (token, dim).
template <typename T>
__device__ inline void kiln_embed(const T* __restrict__ table, const int* __restrict__ tokens,
                                  float* __restrict__ y, int n, int d) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * d) return;
    const long long t = i / d, c = i % d;
    y[i] = kiln_load(table + (long long)tokens[t] * d + c);
}

KILN_EXPORT void kiln_embed_bf16(const uint16_t* table, const int* tokens, float* y, int n, int d) {
    kiln_embed(table, tokens, y, n, d);
}

KILN_EXPORT void kiln_embed_f32(const float* table, const int* tokens, float* y, int n, int d) {
    kiln_embed(table, tokens, y, n, d);
}
