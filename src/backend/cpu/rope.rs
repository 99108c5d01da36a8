//! Interleaved (GPT-J style) rotary embedding: pair i is (x[2i], x[2i+1]), rotated by
//! pos * theta^(-2i/d). Output stays interleaved (HF writes it de-interleaved; q.k is equal).

#[derive(Debug, Clone)]
pub struct Rope {
    /// [d/2] inverse frequencies, computed in f32 as HF does.
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(theta: f64, dim: usize) -> Rope {
        let base = theta as f32;
        let inv_freq = (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect();
        Rope { inv_freq }
    }

    /// [d/2] the frequencies, as a kernel takes them.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn dim(&self) -> usize {
        2 * self.inv_freq.len()
    }

    /// Rotates the first `dim()` values of `x` for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let mut angles = vec![(0.0, 0.0); self.inv_freq.len()]; // [d/2]
        sin_cos(&self.inv_freq, pos, &mut angles);
        rotate_by(&angles, x);
    }
}

/// angles[i] = sin and cos of pos * inv_freq[i]: one position's rotation, which every head
/// at that position shares (worked out once, not once a head).
pub fn sin_cos(inv_freq: &[f32], pos: usize, angles: &mut [(f32, f32)]) {
    let p = pos as f32;
    for (a, f) in angles.iter_mut().zip(inv_freq) {
        *a = (p * f).sin_cos();
    }
}

/// Rotates the first 2 x angles.len() values of `x` by `angles` (from `sin_cos`).
pub fn rotate_by(angles: &[(f32, f32)], x: &mut [f32]) {
    for (i, &(s, c)) in angles.iter().enumerate() {
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = b * c + a * s;
    }
}
