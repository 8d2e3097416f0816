//! Tolerances, the comparison of our logits with the reference, and the report.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fixture::{Fixture, LogitsDtype};

/// Default absolute tolerance for an f32 forward pass against an f32 recording.
pub const DEFAULT_ATOL: f64 = 1e-3;
/// Default relative tolerance.
pub const DEFAULT_RTOL: f64 = 1e-3;
/// Half an ulp of float16 relative to the value (normal range): its rounding error.
const F16_HALF_ULP_REL: f64 = 1.0 / 2048.0;
/// Half the smallest float16 subnormal step: the rounding error of tiny values.
const F16_HALF_ULP_MIN: f64 = 1.0 / 33_554_432.0;

/// `|ours - ref| <= atol + rtol * |ref|` element-wise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part.
    pub rtol: f64,
}

impl Tolerance {
    /// The allowed difference at a reference value.
    pub fn at(&self, reference: f32) -> f64 {
        self.atol + self.rtol * f64::from(reference).abs()
    }

    /// Command-line values win over `fixture.json`, which wins over the defaults. A float16
    /// reference is only accepted when `fixture.json` sets a tolerance and the result is no
    /// tighter than float16's own rounding at every recorded value.
    pub fn resolve(atol: Option<f64>, rtol: Option<f64>, fixture: &Fixture) -> Result<Tolerance> {
        let tol = Tolerance {
            atol: atol.or(fixture.meta.atol).unwrap_or(DEFAULT_ATOL),
            rtol: rtol.or(fixture.meta.rtol).unwrap_or(DEFAULT_RTOL),
        };
        for (name, v) in [("atol", tol.atol), ("rtol", tol.rtol)] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::Tolerance(format!(
                    "{name} is {v}, expected a finite number >= 0"
                )));
            }
        }
        if fixture.logits_dtype == LogitsDtype::F16 {
            if !fixture.has_meta || (fixture.meta.atol.is_none() && fixture.meta.rtol.is_none()) {
                return Err(Error::Tolerance(format!(
                    "{}/logits.npy is float16; its tolerance must come from fixture.json \
                     (atol/rtol no tighter than float16 rounding, e.g. rtol >= {F16_HALF_ULP_REL:.3e}), \
                     or record the logits as float32",
                    fixture.dir.display()
                )));
            }
            if let Some(r) = fixture.logits.iter().find(|&&r| {
                let rounding = (f64::from(r).abs() * F16_HALF_ULP_REL).max(F16_HALF_ULP_MIN);
                tol.at(r) < rounding
            }) {
                return Err(Error::Tolerance(format!(
                    "{}/logits.npy is float16, which rounds {r} by up to {:.3e}, but atol {} + rtol {} \
                     allows only {:.3e} there; loosen the tolerance (rtol >= {F16_HALF_ULP_REL:.3e}) or \
                     record float32 logits",
                    fixture.dir.display(),
                    (f64::from(*r).abs() * F16_HALF_ULP_REL).max(F16_HALF_ULP_MIN),
                    tol.atol,
                    tol.rtol,
                    tol.at(*r)
                )));
            }
        }
        Ok(tol)
    }
}

/// The single worst element (largest absolute difference).
#[derive(Debug, Clone, Serialize)]
pub struct Worst {
    /// Batch row.
    pub row: usize,
    /// Position in the row.
    pub position: usize,
    /// Vocabulary index.
    pub token: usize,
    /// Our logit.
    pub ours: f32,
    /// The reference logit.
    pub reference: f32,
}

/// The figures for one batch row, or for all of them.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Whether these figures pass: every element within tolerance, none non-finite, and every
    /// argmax agreeing except excused near-ties.
    pub pass: bool,
    /// Largest |ours - ref| (over finite values of ours).
    pub max_abs_diff: f64,
    /// Mean |ours - ref| (over finite values of ours).
    pub mean_abs_diff: f64,
    /// Largest |ours - ref| / |ref| over elements whose reference is not zero; `None` (JSON
    /// `null`, "n/a" in the table) when every reference is zero, where it is undefined.
    pub max_rel_diff: Option<f64>,
    /// Fraction of positions whose argmax agrees with the reference's (0..1).
    pub top1_agreement: f64,
    /// Mean KL(reference || ours) of the softmaxes over positions, natural log.
    pub kl_mean: f64,
    /// Largest per-position KL(reference || ours).
    pub kl_max: f64,
    /// Elements outside `atol + rtol * |ref|` (non-finite values of ours included).
    pub out_of_tolerance: usize,
    /// Values of ours that are NaN or infinite.
    pub non_finite: usize,
    /// Positions whose argmax differs where the reference's top two logits are clearly apart.
    pub top1_mismatches: usize,
    /// Positions whose argmax differs but the reference's top two logits are within tolerance
    /// of each other (closer than the sum of their tolerances): excused.
    pub top1_ties_excused: usize,
    /// Positions compared (token positions, each a vector of `vocab` logits).
    pub tokens: usize,
    /// The element with the largest absolute difference.
    pub worst: Option<Worst>,
}

/// The figures for one batch row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Batch index.
    pub row: usize,
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// What [`compare`] measures: the overall figures and the same per batch row.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Over every position.
    pub overall: Figures,
    /// Per batch row.
    pub rows: Vec<Row>,
}

/// How the forward pass ran (known to the caller that ran it, not to [`compare`]).
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// Wall time of the forward pass alone, weight widening included, file checks excluded.
    pub forward_seconds: f64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// CPU threads used for matrix products.
    pub threads: usize,
}

/// The outcome of one verification; `--json` prints exactly this, every key once:
/// the overall [`Figures`] (`pass`, `max_abs_diff`, ..., `tokens`, `worst`) flattened, then the
/// shape, the tolerance, the [`RunInfo`] flattened, `description`, `warnings` and `rows`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The overall figures; `pass` is the verdict.
    #[serde(flatten)]
    pub overall: Figures,
    /// Batch rows.
    pub batch: usize,
    /// Positions per row.
    pub seq: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Tolerance used (after command line, fixture.json and defaults).
    pub atol: f64,
    /// Relative tolerance used.
    pub rtol: f64,
    /// How the forward pass ran.
    #[serde(flatten)]
    pub run: RunInfo,
    /// `description` from fixture.json.
    pub description: Option<String>,
    /// Anything the run adjusted or doubted without failing (also printed on stderr).
    pub warnings: Vec<String>,
    /// The same figures per batch row.
    pub rows: Vec<Row>,
}

impl Report {
    /// Every element within tolerance and every argmax agreeing (except excused near-ties).
    pub fn pass(&self) -> bool {
        self.overall.pass
    }
}

/// Running sums over a set of positions.
#[derive(Default)]
struct Acc {
    max_abs: f64,
    sum_abs: f64,
    finite: usize,
    max_rel: Option<f64>,
    agree: usize,
    kl_sum: f64,
    kl_max: f64,
    kl_count: usize,
    out: usize,
    non_finite: usize,
    mismatches: usize,
    ties: usize,
    positions: usize,
    worst: Option<(f64, Worst)>,
}

impl Acc {
    fn merge(&mut self, o: &Acc) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.sum_abs += o.sum_abs;
        self.finite += o.finite;
        self.max_rel = max_opt(self.max_rel, o.max_rel);
        self.agree += o.agree;
        self.kl_sum += o.kl_sum;
        self.kl_max = self.kl_max.max(o.kl_max);
        self.kl_count += o.kl_count;
        self.out += o.out;
        self.non_finite += o.non_finite;
        self.mismatches += o.mismatches;
        self.ties += o.ties;
        self.positions += o.positions;
        if let Some((d, w)) = &o.worst {
            if self.worst.as_ref().map_or(true, |(best, _)| d > best) {
                self.worst = Some((*d, w.clone()));
            }
        }
    }

    fn figures(&self) -> Figures {
        let pass = self.out == 0 && self.non_finite == 0 && self.mismatches == 0;
        let frac = |n: usize, d: usize| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        Figures {
            pass,
            max_abs_diff: self.max_abs,
            mean_abs_diff: if self.finite == 0 {
                0.0
            } else {
                self.sum_abs / self.finite as f64
            },
            max_rel_diff: self.max_rel,
            top1_agreement: frac(self.agree, self.positions),
            kl_mean: if self.kl_count == 0 {
                0.0
            } else {
                self.kl_sum / self.kl_count as f64
            },
            kl_max: self.kl_max,
            out_of_tolerance: self.out,
            non_finite: self.non_finite,
            top1_mismatches: self.mismatches,
            top1_ties_excused: self.ties,
            tokens: self.positions,
            worst: self.worst.as_ref().map(|(_, w)| w.clone()),
        }
    }
}

/// The larger of two optional values (`None` when both are).
fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Index and value of the largest element; NaN never wins. `None` if all are NaN.
fn argmax(xs: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in xs.iter().enumerate() {
        if !x.is_nan() && best.map_or(true, |(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// log(sum(exp(x))) in f64, shifted by the maximum so it cannot overflow.
fn log_sum_exp(xs: &[f32]) -> f64 {
    let m = xs
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let s: f64 = xs.iter().map(|&x| (f64::from(x) - m).exp()).sum();
    m + s.ln()
}

/// KL(p || q) for p = softmax(reference), q = softmax(ours), natural log.
fn kl_divergence(reference: &[f32], ours: &[f32]) -> f64 {
    let (lr, lo) = (log_sum_exp(reference), log_sum_exp(ours));
    let kl: f64 = reference
        .iter()
        .zip(ours)
        .map(|(&r, &o)| {
            let log_p = f64::from(r) - lr;
            let log_q = f64::from(o) - lo;
            log_p.exp() * (log_p - log_q)
        })
        .sum();
    // Exact KL is >= 0; tiny negative values are rounding.
    kl.max(0.0)
}

fn one_position(
    acc: &mut Acc,
    ours: &[f32],
    reference: &[f32],
    tol: Tolerance,
    row: usize,
    pos: usize,
) {
    acc.positions += 1;
    let mut all_finite = true;
    for (v, (&o, &r)) in ours.iter().zip(reference).enumerate() {
        if !o.is_finite() {
            all_finite = false;
            acc.non_finite += 1;
            acc.out += 1;
            continue;
        }
        let d = (f64::from(o) - f64::from(r)).abs();
        acc.finite += 1;
        acc.sum_abs += d;
        if r != 0.0 {
            acc.max_rel = max_opt(acc.max_rel, Some(d / f64::from(r).abs()));
        }
        if d.is_nan() || d > tol.at(r) {
            acc.out += 1;
        }
        acc.max_abs = acc.max_abs.max(d);
        if acc.worst.as_ref().map_or(true, |(best, _)| d > *best) {
            let w = Worst {
                row,
                position: pos,
                token: v,
                ours: o,
                reference: r,
            };
            acc.worst = Some((d, w));
        }
    }
    if all_finite {
        let kl = kl_divergence(reference, ours);
        acc.kl_sum += kl;
        acc.kl_max = acc.kl_max.max(kl);
        acc.kl_count += 1;
    }
    let (Some(r1), o1) = (argmax(reference), argmax(ours)) else {
        return;
    };
    if all_finite && o1 == Some(r1) {
        acc.agree += 1;
        return;
    }
    // The runner-up of the reference: if it is within tolerance of the top, an element-wise
    // pass could still swap them, so the disagreement is excused.
    let runner_up = reference
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != r1)
        .map(|(_, &x)| x)
        .fold(f32::NEG_INFINITY, f32::max);
    let gap = f64::from(reference[r1]) - f64::from(runner_up);
    if all_finite && gap < tol.at(reference[r1]) + tol.at(runner_up) {
        acc.ties += 1;
    } else {
        acc.mismatches += 1;
    }
}

/// Compares our logits with the reference, both row-major `[batch, seq, vocab]`.
pub fn compare(
    ours: &[f32],
    reference: &[f32],
    shape: (usize, usize, usize),
    tol: Tolerance,
) -> Result<Comparison> {
    let (batch, seq, vocab) = shape;
    let n = crate::error::checked_product(&[batch, seq, vocab], "batch * seq * vocab")?;
    if ours.len() != n || reference.len() != n {
        return Err(Error::Internal(format!(
            "comparison of {} computed and {} reference logits for shape [{batch}, {seq}, {vocab}]",
            ours.len(),
            reference.len()
        )));
    }
    let mut total = Acc::default();
    // One entry per batch row of logits already in memory.
    let mut rows = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut acc = Acc::default();
        for t in 0..seq {
            let at = (b * seq + t) * vocab;
            let (o, r) = (&ours[at..at + vocab], &reference[at..at + vocab]);
            one_position(&mut acc, o, r, tol, b, t);
        }
        total.merge(&acc);
        rows.push(Row {
            row: b,
            figures: acc.figures(),
        });
    }
    Ok(Comparison {
        overall: total.figures(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        atol: 1e-3,
        rtol: 1e-3,
    };

    #[test]
    fn identical_logits_pass_with_zero_divergence() {
        let r = vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25];
        let rep = compare(&r, &r, (1, 2, 3), TOL).unwrap();
        assert!(rep.overall.pass);
        assert_eq!(rep.overall.max_abs_diff, 0.0);
        assert_eq!(rep.overall.kl_max, 0.0);
        assert_eq!(rep.overall.top1_agreement, 1.0);
    }

    #[test]
    fn one_element_just_outside_tolerance_fails() {
        let r = vec![1.0f32, 2.0, 3.0];
        let mut o = r.clone();
        o[0] += 0.0021; // tolerance at 1.0 is 0.002
        let rep = compare(&o, &r, (1, 1, 3), TOL).unwrap();
        assert!(!rep.overall.pass);
        assert_eq!(rep.overall.out_of_tolerance, 1);
        assert_eq!(rep.overall.worst.as_ref().unwrap().token, 0);
    }

    #[test]
    fn argmax_swap_on_a_near_tie_is_excused_but_a_clear_one_is_not() {
        // Reference top two 3.0 and 2.9995 (gap below 2 * tol): ours swaps them within tolerance.
        let r = vec![3.0f32, 2.9995, 0.0];
        let o = vec![2.9996f32, 3.0, 0.0];
        let rep = compare(&o, &r, (1, 1, 3), TOL).unwrap();
        assert!(rep.overall.pass, "{rep:?}");
        assert_eq!(rep.overall.top1_ties_excused, 1);
        assert_eq!(rep.overall.top1_agreement, 0.0);
        // A clear swap (and out of tolerance).
        let o = vec![2.0f32, 3.0, 0.0];
        let rep = compare(&o, &[3.0, 2.0, 0.0], (1, 1, 3), TOL).unwrap();
        assert!(!rep.overall.pass);
        assert_eq!(rep.overall.top1_mismatches, 1);
    }

    #[test]
    fn nan_in_ours_fails_and_is_counted() {
        let r = vec![1.0f32, 2.0];
        let o = vec![f32::NAN, 2.0];
        let rep = compare(&o, &r, (1, 1, 2), TOL).unwrap();
        assert!(!rep.overall.pass);
        assert_eq!(rep.overall.non_finite, 1);
    }

    #[test]
    fn kl_matches_a_hand_computed_value() {
        // p = softmax([0, 0]) = [.5, .5], q = softmax([ln 3, 0]) = [.75, .25]
        let kl = kl_divergence(&[0.0, 0.0], &[3f32.ln(), 0.0]);
        let expected = 0.5 * (0.5f64 / 0.75).ln() + 0.5 * (0.5f64 / 0.25).ln();
        assert!((kl - expected).abs() < 1e-6, "{kl} vs {expected}");
    }

    #[test]
    fn rows_are_reported_separately() {
        let r = vec![1.0f32, 2.0, 1.0, 2.0];
        let o = vec![1.0f32, 2.0, 1.0, 2.5];
        let rep = compare(&o, &r, (2, 1, 2), TOL).unwrap();
        assert!(rep.rows[0].figures.pass);
        assert!(!rep.rows[1].figures.pass);
        assert_eq!(rep.rows[1].figures.max_abs_diff, 0.5);
    }

    #[test]
    fn relative_difference_is_undefined_when_every_reference_is_zero() {
        let rep = compare(&[0.5, 0.0], &[0.0, 0.0], (1, 1, 2), TOL).unwrap();
        assert!(!rep.overall.pass);
        assert_eq!(rep.overall.max_rel_diff, None);
        let rep = compare(&[0.5, 2.0], &[0.0, 1.0], (1, 1, 2), TOL).unwrap();
        assert_eq!(rep.overall.max_rel_diff, Some(1.0));
    }
}
