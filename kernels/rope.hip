// Interleaved (GPT-J) RoPE. CPU twin: backend::cpu::Rope::apply.
#include "compat.h"

// x [rows, heads, stride] f32, rotated in place on dims [offset, offset + rot) of each head:
// pair i = (x[offset + 2i], x[offset + 2i + 1]) turns by pos * inv_freq[i].
// positions [rows] int32, inv_freq [rot / 2] f32. One thread per (row, head, pair).
KILN_EXPORT void kiln_rope_interleaved_f32(float* __restrict__ x, const int* __restrict__ positions,
                                           const float* __restrict__ inv_freq, int rows, int heads, int stride,
                                           int offset, int rot) {
    const int pairs = rot / 2;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * heads * pairs) return;
    const int p = (int)(i % pairs), h = (int)((i / pairs) % heads), r = (int)(i / ((long long)pairs * heads));
    float s, c;
    sincosf((float)positions[r] * inv_freq[p], &s, &c);
    float* v = x + ((size_t)r * heads + h) * stride + offset + 2 * p;
    const float a = v[0], b = v[1];
    v[0] = a * c - b * s;
    v[1] = b * c + a * s;
}
