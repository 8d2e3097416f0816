//! The figures of a tensor pair whose bytes differ: both merged tensors streamed a chunk at a
//! time, widened (f32 for floats, f64 for integers) and compared element by element, with sums
//! in f64.

use std::borrow::Cow;

use cpm_torch::Dtype;

use super::side::Item;
use super::Values;

/// Elements per step of the comparison: a few KiB per side, in L1.
const CHUNK: usize = 2048;

/// A tensor's bytes as a sequence of pieces, read element by element in order.
struct Stream<'p> {
    pieces: &'p [Cow<'p, [u8]>],
    dtype: Dtype,
    piece: usize,
    at: usize,
}

impl<'p> Stream<'p> {
    fn new(pieces: &'p [Cow<'p, [u8]>], dtype: Dtype) -> Self {
        Stream {
            pieces,
            dtype,
            piece: 0,
            at: 0,
        }
    }

    /// The next up to `max` whole elements' bytes, within one piece; empty at the end.
    fn next_bytes(&mut self, max: usize) -> &'p [u8] {
        let es = self.dtype.size();
        while let Some(p) = self.pieces.get(self.piece) {
            let rest = &p[self.at.min(p.len())..];
            let n = (rest.len() / es).min(max) * es;
            if n > 0 {
                self.at += n;
                return &rest[..n];
            }
            self.piece += 1;
            self.at = 0;
        }
        &[]
    }

    /// Fill `out` with the next elements, widened; returns how many were written.
    fn fill<W: Wide>(&mut self, out: &mut [W]) -> usize {
        let es = self.dtype.size();
        let mut n = 0;
        while n < out.len() {
            let bytes = self.next_bytes(out.len() - n);
            if bytes.is_empty() {
                break;
            }
            let m = bytes.len() / es;
            W::widen(bytes, self.dtype, &mut out[n..n + m]);
            n += m;
        }
        n
    }
}

/// Compare two merged tensors of equal shape. Equal bytes in the same dtype are equal values
/// (a memory compare); anything else is widened and compared element by element.
pub(super) fn compare_streams(
    ia: &Item,
    ma: &[Cow<'_, [u8]>],
    ib: &Item,
    mb: &[Cow<'_, [u8]>],
    atol: f64,
) -> Option<Values> {
    if ia.dtype == ib.dtype && crate::merge::same_bytes(ma, mb) {
        return None;
    }
    let (sa, sb) = (Stream::new(ma, ia.dtype), Stream::new(mb, ib.dtype));
    let fig = if ia.dtype.is_float() && ib.dtype.is_float() {
        figures::<f32>(sa, sb, atol)
    } else {
        figures::<f64>(sa, sb, atol)
    };
    (fig.differing > 0).then(|| fig.values(&ia.name, &ia.shape))
}

/// Run the accumulator over both streams, a chunk at a time.
fn figures<W: Wide>(mut sa: Stream<'_>, mut sb: Stream<'_>, atol: f64) -> Figures {
    let mut fig = Figures::new(atol);
    let mut xa = vec![W::default(); CHUNK];
    let mut xb = vec![W::default(); CHUNK];
    loop {
        let (n, m) = (sa.fill(&mut xa), sb.fill(&mut xb));
        let n = n.min(m);
        if n == 0 {
            return fig;
        }
        fig.add(&xa[..n], &xb[..n]);
    }
}

/// Values the comparison runs on: f32 for float tensors (exact for f16, bf16, f32; f64 rounds),
/// f64 for integer and boolean ones (raw mode only; exact up to 2^53).
trait Wide: Copy + Default {
    fn f64(self) -> f64;
    /// Bit-for-bit equality (so NaN equals only the identical NaN, and -0 is not +0).
    fn same(self, o: Self) -> bool;
    fn widen(bytes: &[u8], dtype: Dtype, out: &mut [Self]);
}

impl Wide for f32 {
    fn f64(self) -> f64 {
        self as f64
    }
    fn same(self, o: f32) -> bool {
        self.to_bits() == o.to_bits()
    }
    fn widen(bytes: &[u8], dtype: Dtype, out: &mut [f32]) {
        crate::elements::widen(bytes, dtype, out)
    }
}

impl Wide for f64 {
    fn f64(self) -> f64 {
        self
    }
    fn same(self, o: f64) -> bool {
        self.to_bits() == o.to_bits()
    }
    fn widen(bytes: &[u8], dtype: Dtype, out: &mut [f64]) {
        let es = dtype.size();
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(es)) {
            *o = crate::elements::element(c, dtype, 0);
        }
    }
}

/// Independent sums, so the compiler can keep them in vector registers (f64 addition is not
/// reassociated on its own).
const LANES: usize = 4;

/// Running figures of one tensor pair.
struct Figures {
    atol: f64,
    elements: u64,
    differing: u64,
    first: Option<u64>,
    max_abs: [f64; LANES],
    d2: [f64; LANES],
    a2: [f64; LANES],
    b2: [f64; LANES],
    ab: [f64; LANES],
}

impl Figures {
    fn new(atol: f64) -> Self {
        Figures {
            // At 0 only identical bits are equal (so -0 is not +0): no difference is <= -1.
            atol: if atol > 0.0 { atol } else { -1.0 },
            elements: 0,
            differing: 0,
            first: None,
            max_abs: [0.0; LANES],
            d2: [0.0; LANES],
            a2: [0.0; LANES],
            b2: [0.0; LANES],
            ab: [0.0; LANES],
        }
    }

    /// Add a chunk of pairs (equal lengths).
    fn add<W: Wide>(&mut self, a: &[W], b: &[W]) {
        let atol = self.atol;
        let mut ndiff = [0u64; LANES];
        let body = a.len() / LANES * LANES;
        for (ca, cb) in a[..body]
            .chunks_exact(LANES)
            .zip(b[..body].chunks_exact(LANES))
        {
            for l in 0..LANES {
                let (x, y) = (ca[l].f64(), cb[l].f64());
                let d = x - y;
                self.d2[l] += d * d;
                self.a2[l] += x * x;
                self.b2[l] += y * y;
                self.ab[l] += x * y;
                // A NaN difference compares false: it is never "within atol", never a maximum.
                let ad = d.abs();
                ndiff[l] += u64::from(!(ca[l].same(cb[l]) || ad <= atol));
                self.max_abs[l] = if ad > self.max_abs[l] {
                    ad
                } else {
                    self.max_abs[l]
                };
            }
        }
        for (i, (x, y)) in a[body..].iter().zip(&b[body..]).enumerate() {
            let l = i % LANES;
            let (xf, yf) = (x.f64(), y.f64());
            let d = xf - yf;
            self.d2[l] += d * d;
            self.a2[l] += xf * xf;
            self.b2[l] += yf * yf;
            self.ab[l] += xf * yf;
            ndiff[l] += u64::from(!(x.same(*y) || d.abs() <= atol));
            self.max_abs[l] = if d.abs() > self.max_abs[l] {
                d.abs()
            } else {
                self.max_abs[l]
            };
        }
        let n: u64 = ndiff.iter().sum();
        if n > 0 && self.first.is_none() {
            let at = a
                .iter()
                .zip(b)
                .position(|(x, y)| !(x.same(*y) || (x.f64() - y.f64()).abs() <= atol));
            self.first = at.map(|i| self.elements + i as u64);
        }
        self.differing += n;
        self.elements += a.len() as u64;
    }

    fn values(&self, name: &str, shape: &[u64]) -> Values {
        let sum = |v: &[f64; LANES]| v.iter().sum::<f64>();
        let finite = |x: f64| x.is_finite().then_some(x);
        let (d2, a2, b2, ab) = (sum(&self.d2), sum(&self.a2), sum(&self.b2), sum(&self.ab));
        let max = self.max_abs.iter().fold(0.0f64, |m, &x| m.max(x));
        Values {
            name: name.to_string(),
            max_abs_diff: finite(max),
            differing: self.differing,
            elements: self.elements,
            fraction: self.differing as f64 / (self.elements.max(1)) as f64,
            first_index: unravel(self.first.unwrap_or(0), shape),
            rel_diff: finite(d2.sqrt() / a2.sqrt()),
            cosine: finite(ab / (a2.sqrt() * b2.sqrt())),
        }
    }
}

/// A row-major linear index as one index per dimension.
fn unravel(mut i: u64, shape: &[u64]) -> Vec<u64> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::side::How;
    use cpm_torch::TensorRef;
    use half::f16;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn item(name: &str, shape: &[u64], dtype: Dtype) -> Item {
        let tensor = TensorRef {
            storage_key: "0".into(),
            dtype,
            offset: 0,
            shape: shape.to_vec(),
            stride: vec![1; shape.len()],
        };
        Item {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            how: How::Stored {
                rank: 0,
                source: name.into(),
                tensor: std::rc::Rc::new(tensor),
            },
        }
    }

    /// Compare `a` (as one f32 piece) with `b` (as f32 pieces split at `cuts`).
    fn compare(a: &[f32], b: &[f32], cuts: &[usize], atol: f64) -> Option<Values> {
        let shape = [a.len() as u64];
        let pa = vec![Cow::Owned(f32_bytes(a))];
        let mut pb = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain([b.len()].iter()) {
            pb.push(Cow::Owned(f32_bytes(&b[last..c])));
            last = c;
        }
        let (ia, ib) = (item("t", &shape, Dtype::F32), item("t", &shape, Dtype::F32));
        compare_streams(&ia, &pa, &ib, &pb, atol)
    }

    #[test]
    fn nan_equals_only_the_identical_nan_and_minus_zero_is_not_plus_zero_at_atol_0() {
        let quiet = f32::from_bits(0x7fc0_0000);
        let other = f32::from_bits(0x7fc0_0001);
        assert!(compare(&[1.0, quiet], &[1.0, quiet], &[], 0.0).is_none());
        let v = compare(&[1.0, quiet], &[1.0, other], &[], 0.0).expect("payloads differ");
        assert_eq!((v.differing, v.first_index.as_slice()), (1, &[1u64][..]));
        assert_eq!(v.max_abs_diff, Some(0.0), "a NaN pair has no magnitude");
        assert!(
            v.rel_diff.is_none() && v.cosine.is_none(),
            "NaN figures are null"
        );
        // A NaN is never within any tolerance.
        assert!(compare(&[quiet], &[1.0], &[], 1e30).is_some());
        let v = compare(&[0.0], &[-0.0], &[], 0.0).expect("bit-for-bit");
        assert_eq!(v.max_abs_diff, Some(0.0));
        assert!(compare(&[0.0], &[-0.0], &[], 1e-30).is_none());
    }

    #[test]
    fn atol_is_inclusive_and_measured_exactly_in_f64() {
        let (a, b) = (1.0f32, 1.0f32 + f32::EPSILON);
        let d = (b as f64) - (a as f64);
        assert!(compare(&[a], &[b], &[], d).is_none());
        assert!(compare(&[a], &[b], &[], d * 0.5).is_some());
        assert!(compare(&[f32::INFINITY], &[f32::INFINITY], &[], 0.5).is_none());
        let v = compare(&[f32::INFINITY], &[1.0], &[], 0.5).expect("inf vs 1");
        assert_eq!(
            v.max_abs_diff, None,
            "an infinite difference is not a finite figure"
        );
    }

    #[test]
    fn figures_agree_with_a_plain_f64_computation_across_chunks_lanes_and_pieces() {
        // Long enough for several chunks, a length that leaves a lane tail, pieces of B cut
        // at odd places, and the first difference past the first chunk.
        let n = 3 * CHUNK + 7;
        let a: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut b = a.clone();
        for &k in &[CHUNK + 5, 2 * CHUNK + 1, n - 1] {
            b[k] += 0.5 + k as f32 / 1e4;
        }
        let v = compare(&a, &b, &[1, 333, CHUNK + 3, 2 * CHUNK + 2], 0.0).expect("differs");
        assert_eq!((v.differing, v.elements), (3, n as u64));
        assert_eq!(v.first_index, [(CHUNK + 5) as u64]);
        let (mut d2, mut a2, mut b2, mut ab, mut max) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for (x, y) in a.iter().zip(&b) {
            let (x, y) = (*x as f64, *y as f64);
            d2 += (x - y) * (x - y);
            a2 += x * x;
            b2 += y * y;
            ab += x * y;
            max = max.max((x - y).abs());
        }
        assert_eq!(v.max_abs_diff, Some(max));
        let close = |x: Option<f64>, y: f64| (x.unwrap() - y).abs() <= 1e-12 * y.abs();
        assert!(close(v.rel_diff, d2.sqrt() / a2.sqrt()), "{v:?}");
        assert!(close(v.cosine, ab / (a2.sqrt() * b2.sqrt())), "{v:?}");
        // Equal values in differently cut pieces are equal.
        assert!(compare(&a, &a, &[1, CHUNK, CHUNK + 1], 0.0).is_none());
    }

    #[test]
    fn f16_and_f32_of_the_same_values_are_equal_and_integers_compare_exactly() {
        let xs = [0.5f32, -3.25, 65504.0, 1.0e-7];
        let h: Vec<u8> = xs
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        let w: Vec<f32> = xs.iter().map(|x| f16::from_f32(*x).to_f32()).collect();
        let (ia, ib) = (item("t", &[4], Dtype::F16), item("t", &[4], Dtype::F32));
        let (pa, pb) = (vec![Cow::Owned(h)], vec![Cow::Owned(f32_bytes(&w))]);
        assert!(compare_streams(&ia, &pa, &ib, &pb, 0.0).is_none());
        // 2^53 + 1 and 2^53 are one apart as integers but equal as f32 (and f64).
        let big = |v: i64| vec![Cow::Owned(v.to_le_bytes().to_vec())];
        let (ia, ib) = (item("t", &[1], Dtype::I64), item("t", &[1], Dtype::I64));
        let v = compare_streams(&ia, &big(3), &ib, &big(4), 0.0).expect("3 vs 4");
        assert_eq!(v.max_abs_diff, Some(1.0));
    }

    #[test]
    fn unravel_gives_row_major_indices() {
        assert_eq!(unravel(0, &[2, 3]), [0, 0]);
        assert_eq!(unravel(5, &[2, 3]), [1, 2]);
        assert_eq!(unravel(7, &[2, 3, 4]), [0, 1, 3]);
        assert_eq!(unravel(3, &[4]), [3]);
    }
}
