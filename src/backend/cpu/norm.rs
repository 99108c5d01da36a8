//! RMSNorm and LayerNorm over the last dimension.

/// x [n, d] in place: x * rsqrt(mean(x^2) + eps) * w.
pub fn rms_norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_mut(d) {
        let ms = super::dot(row, row) / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * r * g;
        }
    }
}

/// x [n, d] in place: (x - mean) / sqrt(var + eps) * w + b, biased variance.
pub fn layer_norm_rows(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_mut(d) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let r = 1.0 / (var + eps).sqrt();
        for ((v, g), c) in row.iter_mut().zip(w).zip(b) {
            *v = (*v - mean) * r * g + c;
        }
    }
}
