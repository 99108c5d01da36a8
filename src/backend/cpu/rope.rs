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
        rotate(&self.inv_freq, x, pos);
    }
}

/// Rotates the first 2 x inv_freq.len() values of `x` for position `pos`.
pub fn rotate(inv_freq: &[f32], x: &mut [f32], pos: usize) {
    let p = pos as f32;
    for (i, f) in inv_freq.iter().enumerate() {
        let (s, c) = (p * f).sin_cos();
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = b * c + a * s;
    }
}
