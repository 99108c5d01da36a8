//! Top-k selection.

/// Indices of the k largest scores, ascending by index. Ties are broken arbitrarily; NaN
/// sorts lowest.
pub fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let k = k.min(idx.len());
    if k < idx.len() {
        let key = |i: &u32| {
            let s = scores[*i as usize];
            if s.is_nan() { f32::NEG_INFINITY } else { s }
        };
        idx.select_nth_unstable_by(k, |a, b| key(b).total_cmp(&key(a)));
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn picks_the_largest() {
        assert_eq!(top_k(&[0.1, 5.0, -1.0, 3.0, 2.0], 2), vec![1, 3]);
        assert_eq!(top_k(&[1.0, 2.0], 5), vec![0, 1]);
        assert_eq!(top_k(&[f32::NAN, 1.0, f32::NEG_INFINITY], 1), vec![1]);
    }
}
