//! Matrix products over strided f32 views, the one place that calls `gemm` with raw pointers
//! (every bound checked first). Used by the panel products, attention and the layers above.

use gemm::Parallelism;

/// A row-major or strided matrix view: element (i, j) is `data[offset + i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub(super) data: &'a [f32],
    pub(super) offset: usize,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> View<'a> {
    pub(super) fn rows(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            offset: 0,
            rs: cols,
            cs: 1,
        }
    }

    /// The transposed view (no data moves).
    pub(super) fn t(self) -> Self {
        View {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Panics unless every element of an `m x n` view lies inside `data`: this is what makes the
    /// raw-pointer call below sound. Sizes were validated when the model was opened, so a failure
    /// here is a bug in this file, not bad input.
    fn check(&self, m: usize, n: usize) {
        if m > 0 && n > 0 {
            let last = self.offset + (m - 1) * self.rs + (n - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst[m x n] = (accumulate ? dst : 0) + lhs[m x k] * rhs[k x n]`, `dst` row-major with row
/// stride `dst_rs` starting at `dst_off`.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    shape: (usize, usize, usize),
    accumulate: bool,
    par: Parallelism,
) {
    let at = (dst_off, dst_rs, 1);
    matmul_strided(dst, at, lhs, rhs, shape, accumulate, par);
}

/// [`matmul`] into any strided `dst`: element (i, j) at `off + i * rs + j * cs` for
/// `(off, rs, cs) = at`.
pub(super) fn matmul_strided(
    dst: &mut [f32],
    (dst_off, dst_rs, dst_cs): (usize, usize, usize),
    lhs: View<'_>,
    rhs: View<'_>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    par: Parallelism,
) {
    lhs.check(m, k);
    rhs.check(k, n);
    View {
        data: dst,
        offset: dst_off,
        rs: dst_rs,
        cs: dst_cs,
    }
    .check(m, n);
    // SAFETY: the three checks above keep every access in bounds; dst is borrowed mutably and
    // cannot alias the shared lhs/rhs borrows. Strides fit isize because the buffers exist.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_off),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
