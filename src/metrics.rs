//! Out-of-distribution detection metrics computed from anomaly scores.
//!
//! Convention throughout: a higher score means "more anomalous" (vae-ood uses
//! score = −ELBO), the anomaly / out-of-distribution (OOD) set is the positive
//! class, and a cutoff `t` predicts "anomaly" when `score >= t`.
//!
//! Every function sorts the scores once (O(n log n)) and then walks the distinct
//! score values from the highest to the lowest, so tied scores always move
//! together, exactly like scikit-learn's `roc_curve`, `roc_auc_score` and
//! `average_precision_score`.
//!
//! **NaN handling.** A NaN score is treated as `+∞` (the most anomalous value
//! possible; a NaN ELBO usually means the model blew up on that input). NaNs
//! therefore tie with each other and with genuine `+∞` scores. `-0.0` and `0.0`
//! are the same value. No function here panics on NaN or infinite input.

use anyhow::{bail, Result};
use serde::Serialize;

/// A receiver operating characteristic curve, anomalies being the positive class.
///
/// `fpr[i]`, `tpr[i]` are the rates obtained by predicting "anomaly" when
/// `score >= thresholds[i]`. There is one point per distinct score, in
/// decreasing threshold order, preceded by the point (0, 0) whose threshold is
/// `+∞` (as scikit-learn ≥ 1.3 does), so the curve runs from (0, 0) to (1, 1).
/// Note that serde_json writes the `+∞` threshold as `null`.
///
/// If either class is empty the corresponding rate is NaN.
#[derive(Debug, Clone, Serialize)]
pub struct Roc {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    pub thresholds: Vec<f64>,
}

/// The usual summary of how well a score separates normals from anomalies.
#[derive(Debug, Clone, Serialize)]
pub struct OodMetrics {
    /// Area under the ROC curve: Mann–Whitney U / (n_anomaly · n_normal), ties
    /// counted 1/2. Equals sklearn `roc_auc_score(y = is_anomaly, score)`.
    pub auroc: f64,
    /// Average precision with the in-distribution set as the positive class
    /// (scores negated), sklearn `average_precision_score` semantics.
    pub aupr_in: f64,
    /// Average precision with the OOD set as the positive class.
    pub aupr_out: f64,
    /// False positive rate at the highest cutoff whose true positive rate is at
    /// least 95 % (i.e. the lowest FPR achievable while catching ≥ 95 % of the
    /// anomalies).
    pub fpr_at_95_tpr: f64,
    /// The cutoff maximising Youden's J = TPR − FPR (see [`youden`]).
    pub youden_threshold: f64,
    pub youden_tpr: f64,
    pub youden_fpr: f64,
    pub n_normal: usize,
    pub n_anomaly: usize,
}

/// NaN → +∞, −0.0 → 0.0, everything else unchanged.
fn canon(x: f64) -> f64 {
    if x.is_nan() {
        f64::INFINITY
    } else if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// One distinct score value and how many positives / negatives have it.
#[derive(Debug, Clone, Copy)]
struct Group {
    score: f64,
    pos: u64,
    neg: u64,
}

/// Distinct scores of the union of `pos` and `neg`, from highest to lowest,
/// with per-class counts.
fn groups(pos: &[f64], neg: &[f64]) -> Vec<Group> {
    let mut all: Vec<(f64, bool)> = pos
        .iter()
        .map(|&s| (canon(s), true))
        .chain(neg.iter().map(|&s| (canon(s), false)))
        .collect();
    // After `canon` there is no NaN and no -0.0, so total_cmp agrees with ==.
    all.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let mut out: Vec<Group> = Vec::new();
    for (score, is_pos) in all {
        match out.last_mut() {
            Some(g) if g.score == score => {}
            _ => out.push(Group {
                score,
                pos: 0,
                neg: 0,
            }),
        }
        let g = out.last_mut().expect("just pushed");
        if is_pos {
            g.pos += 1;
        } else {
            g.neg += 1;
        }
    }
    out
}

/// Area under the ROC curve with `anomaly` as the positive class:
/// P(score_anomaly > score_normal) + ½ P(score_anomaly = score_normal),
/// i.e. the Mann–Whitney U statistic divided by `n_normal · n_anomaly`.
///
/// Returns NaN if either slice is empty. Computed exactly in integers, so
/// all-equal scores give exactly 0.5.
pub fn auroc(normal: &[f64], anomaly: &[f64]) -> f64 {
    if normal.is_empty() || anomaly.is_empty() {
        return f64::NAN;
    }
    // 2U = Σ over groups of neg_in_group · (2 · positives strictly above + positives in group)
    let mut pos_above: u128 = 0;
    let mut twice_u: u128 = 0;
    for g in groups(anomaly, normal) {
        twice_u += g.neg as u128 * (2 * pos_above + g.pos as u128);
        pos_above += g.pos as u128;
    }
    let denom = 2 * normal.len() as u128 * anomaly.len() as u128;
    twice_u as f64 / denom as f64
}

/// The ROC curve (anomalies positive), one point per distinct score plus the
/// initial (0, 0) point; like sklearn `roc_curve(..., drop_intermediate=False)`.
pub fn roc_curve(normal: &[f64], anomaly: &[f64]) -> Roc {
    let gs = groups(anomaly, normal);
    let (n_pos, n_neg) = (anomaly.len() as f64, normal.len() as f64);
    let mut roc = Roc {
        fpr: Vec::with_capacity(gs.len() + 1),
        tpr: Vec::with_capacity(gs.len() + 1),
        thresholds: Vec::with_capacity(gs.len() + 1),
    };
    roc.fpr.push(0.0 / n_neg);
    roc.tpr.push(0.0 / n_pos);
    roc.thresholds.push(f64::INFINITY);
    let (mut tp, mut fp) = (0u64, 0u64);
    for g in gs {
        tp += g.pos;
        fp += g.neg;
        roc.fpr.push(fp as f64 / n_neg);
        roc.tpr.push(tp as f64 / n_pos);
        roc.thresholds.push(g.score);
    }
    roc
}

/// Average precision of `pos` against `neg` (higher score = more likely
/// positive), with sklearn `average_precision_score` semantics:
/// AP = Σₖ (Rₖ − Rₖ₋₁) · Pₖ over the distinct scores taken as cutoffs from the
/// highest down (tied scores enter together, no interpolation).
///
/// Returns NaN if `pos` is empty (sklearn warns and returns a meaningless
/// value there); returns 1.0 if only `neg` is empty.
pub fn average_precision(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() {
        return f64::NAN;
    }
    let n_pos = pos.len() as f64;
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut ap = 0.0;
    for g in groups(pos, neg) {
        tp += g.pos;
        fp += g.neg;
        if g.pos > 0 {
            let precision = tp as f64 / (tp + fp) as f64;
            ap += (g.pos as f64 / n_pos) * precision;
        }
    }
    ap
}

/// The cutoff maximising Youden's J = TPR − FPR on `roc`, returned as
/// `(threshold, tpr, fpr)`.
///
/// Only the points that correspond to an observed score are candidates (the
/// artificial `+∞` start point is skipped), so the threshold is always one of
/// the scores. Ties in J are broken towards the highest threshold (fewest
/// false alarms). Returns `None` if `roc` has no such point or its rates are NaN.
pub fn youden(roc: &Roc) -> Option<(f64, f64, f64)> {
    let mut best: Option<(usize, f64)> = None;
    for i in 1..roc.thresholds.len() {
        let j = roc.tpr[i] - roc.fpr[i];
        if j.is_nan() {
            return None;
        }
        if best.is_none_or(|(_, bj)| j > bj) {
            best = Some((i, j));
        }
    }
    best.map(|(i, _)| (roc.thresholds[i], roc.tpr[i], roc.fpr[i]))
}

/// All the summary metrics at once. Errors if either set is empty.
pub fn ood_metrics(normal: &[f64], anomaly: &[f64]) -> Result<OodMetrics> {
    if normal.is_empty() || anomaly.is_empty() {
        bail!(
            "cannot compute OOD metrics: {} normal and {} anomaly scores (both sets must be non-empty)",
            normal.len(),
            anomaly.len()
        );
    }
    let gs = groups(anomaly, normal);
    let (n_pos, n_neg) = (anomaly.len() as u64, normal.len() as u64);

    // FPR at 95 % TPR: the first (highest) cutoff with tp / n_pos >= 0.95,
    // tested exactly as 20 · tp >= 19 · n_pos.
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut fpr_at_95_tpr = 1.0;
    // Youden's J compared exactly: tp/n_pos − fp/n_neg ∝ tp·n_neg − fp·n_pos.
    let mut best_j: Option<(i128, f64, u64, u64)> = None;
    for g in &gs {
        tp += g.pos;
        fp += g.neg;
        if 20 * tp >= 19 * n_pos && 20 * (tp - g.pos) < 19 * n_pos {
            fpr_at_95_tpr = fp as f64 / n_neg as f64;
        }
        let j = tp as i128 * n_neg as i128 - fp as i128 * n_pos as i128;
        if best_j.is_none_or(|(bj, ..)| j > bj) {
            best_j = Some((j, g.score, tp, fp));
        }
    }
    let (_, youden_threshold, ytp, yfp) = best_j.expect("non-empty input has a group");

    let neg_normal: Vec<f64> = normal.iter().map(|&s| -canon(s)).collect();
    let neg_anomaly: Vec<f64> = anomaly.iter().map(|&s| -canon(s)).collect();

    Ok(OodMetrics {
        auroc: auroc(normal, anomaly),
        aupr_in: average_precision(&neg_normal, &neg_anomaly),
        aupr_out: average_precision(anomaly, normal),
        fpr_at_95_tpr,
        youden_threshold,
        youden_tpr: ytp as f64 / n_pos as f64,
        youden_fpr: yfp as f64 / n_neg as f64,
        n_normal: normal.len(),
        n_anomaly: anomaly.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
    }

    fn assert_close(a: f64, b: f64) {
        assert!(close(a, b), "{a} != {b}");
    }

    fn assert_vec_close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!(x == y || close(*x, *y), "{a:?} vs {b:?}");
        }
    }

    /// O(n²) definition of AUROC.
    fn pairwise_auroc(normal: &[f64], anomaly: &[f64]) -> f64 {
        let mut s = 0.0;
        for &a in anomaly {
            for &n in normal {
                s += if a > n {
                    1.0
                } else if a == n {
                    0.5
                } else {
                    0.0
                };
            }
        }
        s / (normal.len() * anomaly.len()) as f64
    }

    fn trapezoid(roc: &Roc) -> f64 {
        (1..roc.fpr.len())
            .map(|i| (roc.fpr[i] - roc.fpr[i - 1]) * (roc.tpr[i] + roc.tpr[i - 1]) / 2.0)
            .sum()
    }

    /// Quantised scores (k / 4 for k in 0..20) so that ties are frequent.
    fn random_scores(rng: &mut StdRng, n: usize, shift: i32) -> Vec<f64> {
        (0..n)
            .map(|_| (rng.random_range(0..20) + shift) as f64 / 4.0)
            .collect()
    }

    // The scikit-learn example: y = [0, 0, 1, 1], scores = [0.1, 0.4, 0.35, 0.8].
    //   AUROC: anomaly 0.35 beats 0.1, loses to 0.4; 0.8 beats both → 3/4.
    //   AP (anomaly positive), cutoffs from the top:
    //     0.8 : P = 1,   R = 1/2
    //     0.4 : P = 1/2, R = 1/2  (no recall gain)
    //     0.35: P = 2/3, R = 1
    //     0.1 : P = 1/2, R = 1    (no recall gain)
    //   AP = 1/2·1 + 1/2·2/3 = 5/6. By symmetry AP_in = 5/6 too.
    //   sklearn 1.9.1: roc_auc 0.75, AP 0.8333333333333333 both ways,
    //   roc_curve fpr [0,0,.5,.5,1], tpr [0,.5,.5,1,1], thr [inf,.8,.4,.35,.1].
    #[test]
    fn sklearn_doc_example() {
        let normal = [0.1, 0.4];
        let anomaly = [0.35, 0.8];
        assert_eq!(auroc(&normal, &anomaly), 0.75);
        assert_close(average_precision(&anomaly, &normal), 5.0 / 6.0);
        let m = ood_metrics(&normal, &anomaly).unwrap();
        assert_close(m.aupr_out, 0.8333333333333333);
        assert_close(m.aupr_in, 0.8333333333333333);
        let roc = roc_curve(&normal, &anomaly);
        assert_eq!(roc.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(roc.thresholds, vec![f64::INFINITY, 0.8, 0.4, 0.35, 0.1]);
        // TPR first reaches ≥ 0.95 at cutoff 0.35, where FPR = 1/2.
        assert_eq!(m.fpr_at_95_tpr, 0.5);
        // J: 0.8 → .5, 0.4 → 0, 0.35 → .5, 0.1 → 0; tie broken to the higher cutoff.
        assert_eq!(
            (m.youden_threshold, m.youden_tpr, m.youden_fpr),
            (0.8, 0.5, 0.0)
        );
        assert_eq!(youden(&roc), Some((0.8, 0.5, 0.0)));
        assert_eq!((m.n_normal, m.n_anomaly), (2, 2));
    }

    // Ties across classes: normal [0.1, 0.4, 0.35, 0.8], anomaly [0.4, 0.8, 0.9, 0.35].
    // Distinct scores, high to low, with (anomalies, normals):
    //   0.9 (1,0)  0.8 (1,1)  0.4 (1,1)  0.35 (1,1)  0.1 (0,1)
    // U: anomaly 0.9 → 4; 0.8 → 3 + ½; 0.4 → 2 + ½; 0.35 → 1 + ½  ⇒ U = 11.5, AUROC = 11.5/16.
    // ROC points: (0,0) (0,.25) (.25,.5) (.5,.75) (.75,1) (1,1).
    // AP_out: P at each recall step: 1, 2/3, 3/5, 4/7 (each step ΔR = 1/4)
    //   = (1 + 2/3 + 3/5 + 4/7)/4 = 298/420.
    // AP_in (normals positive, scores negated, so walk upward): 0.1 (1,0), 0.35 (1,1),
    //   0.4 (1,1), 0.8 (1,1), 0.9 (0,1) → same precisions ⇒ 298/420.
    // sklearn 1.9.1: roc_auc 0.71875, AP_out = AP_in = 0.7095238095238094.
    #[test]
    fn ties_hand_computed_and_sklearn() {
        let normal = [0.1, 0.4, 0.35, 0.8];
        let anomaly = [0.4, 0.8, 0.9, 0.35];
        let m = ood_metrics(&normal, &anomaly).unwrap();
        assert_eq!(m.auroc, 0.71875);
        assert_close(m.aupr_out, 298.0 / 420.0);
        assert_close(m.aupr_out, 0.7095238095238094);
        assert_close(m.aupr_in, 0.7095238095238094);
        let roc = roc_curve(&normal, &anomaly);
        assert_eq!(roc.fpr, vec![0.0, 0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
        assert_eq!(
            roc.thresholds,
            vec![f64::INFINITY, 0.9, 0.8, 0.4, 0.35, 0.1]
        );
        // TPR reaches 1 ≥ .95 first at 0.35 where FPR = 3/4.
        assert_eq!(m.fpr_at_95_tpr, 0.75);
        // J = .25 at 0.9, 0.8, 0.4, 0.35 → highest cutoff 0.9.
        assert_eq!(
            (m.youden_threshold, m.youden_tpr, m.youden_fpr),
            (0.9, 0.25, 0.0)
        );
    }

    // Integer scores with many ties, reference values from scikit-learn 1.9.1:
    //   roc_auc_score 0.6954545454545454, AP_out 0.6640267524013654,
    //   AP_in (1 - y, -s) 0.7152181152181152.
    #[test]
    fn sklearn_reference_integers() {
        let normal = [3., 1., 4., 1., 5., 9., 2., 6., 5., 3., 5.];
        let anomaly = [8., 9., 7., 9., 3., 2., 3., 8., 4., 6.];
        let m = ood_metrics(&normal, &anomaly).unwrap();
        assert_close(m.auroc, 0.6954545454545454);
        assert_close(m.aupr_out, 0.6640267524013654);
        assert_close(m.aupr_in, 0.7152181152181152);
        let roc = roc_curve(&normal, &anomaly);
        assert_vec_close(
            &roc.fpr,
            &[
                0.0,
                1. / 11.,
                1. / 11.,
                1. / 11.,
                2. / 11.,
                5. / 11.,
                6. / 11.,
                8. / 11.,
                9. / 11.,
                1.0,
            ],
        );
        assert_vec_close(
            &roc.tpr,
            &[0.0, 0.2, 0.4, 0.5, 0.6, 0.6, 0.7, 0.9, 1.0, 1.0],
        );
        assert_eq!(
            roc.thresholds,
            vec![f64::INFINITY, 9., 8., 7., 6., 5., 4., 3., 2., 1.]
        );
        // TPR ≥ .95 first at cutoff 2 (TPR 1), FPR 9/11.
        assert_close(m.fpr_at_95_tpr, 9.0 / 11.0);
        // J per cutoff: 9: .2-1/11, 8: .4-1/11 = .3091, 7: .5-1/11 = .4091,
        // 6: .6-2/11 = .4182 (max), 5: .6-5/11, ...
        assert_eq!(m.youden_threshold, 6.0);
        assert_close(m.youden_tpr, 0.6);
        assert_close(m.youden_fpr, 2.0 / 11.0);
    }

    #[test]
    fn all_equal_scores_give_exactly_half() {
        let normal = vec![1.5; 7];
        let anomaly = vec![1.5; 13];
        assert_eq!(auroc(&normal, &anomaly), 0.5);
        let roc = roc_curve(&normal, &anomaly);
        assert_eq!(roc.fpr, vec![0.0, 1.0]);
        assert_eq!(roc.tpr, vec![0.0, 1.0]);
        // One cutoff, everything predicted anomalous: precision = 13/20.
        assert_close(average_precision(&anomaly, &normal), 13.0 / 20.0);
        let m = ood_metrics(&normal, &anomaly).unwrap();
        assert_eq!(m.fpr_at_95_tpr, 1.0);
        assert_eq!(m.youden_threshold, 1.5);
    }

    #[test]
    fn perfect_and_reversed_separation() {
        let normal = [0.0, 1.0, 2.0];
        let anomaly = [3.0, 4.0];
        assert_eq!(auroc(&normal, &anomaly), 1.0);
        assert_eq!(auroc(&anomaly, &normal), 0.0);
        let m = ood_metrics(&normal, &anomaly).unwrap();
        assert_eq!((m.aupr_in, m.aupr_out, m.fpr_at_95_tpr), (1.0, 1.0, 0.0));
        assert_eq!(
            (m.youden_threshold, m.youden_tpr, m.youden_fpr),
            (3.0, 1.0, 0.0)
        );
        let r = ood_metrics(&anomaly, &normal).unwrap();
        assert_eq!(r.auroc, 0.0);
        assert_eq!(r.fpr_at_95_tpr, 1.0);
        // Reversed: anomalies [0,1,2] below normals [3,4]; AP_out: positives enter
        // at cutoffs 2, 1, 0 with precisions 1/3, 2/4, 3/5 → (1/3 + 1/2 + 3/5)/3.
        assert_close(r.aupr_out, (1.0 / 3.0 + 0.5 + 0.6) / 3.0);
    }

    #[test]
    fn empty_inputs() {
        assert!(auroc(&[], &[1.0]).is_nan());
        assert!(auroc(&[1.0], &[]).is_nan());
        assert!(average_precision(&[], &[1.0]).is_nan());
        assert_eq!(average_precision(&[1.0, 2.0], &[]), 1.0);
        let e = ood_metrics(&[], &[1.0]).unwrap_err().to_string();
        assert!(e.contains("0 normal"), "{e}");
        assert!(!e.contains('\n'));
        assert!(ood_metrics(&[1.0], &[]).is_err());
        let roc = roc_curve(&[], &[1.0]);
        assert!(roc.fpr.iter().all(|f| f.is_nan()));
        assert!(youden(&roc).is_none());
    }

    #[test]
    fn nan_is_treated_as_positive_infinity() {
        let normal = [0.1, f64::NAN, 0.3, 0.2];
        let anomaly = [f64::NAN, 0.5, f64::INFINITY, -f64::NAN];
        let normal_inf = [0.1, f64::INFINITY, 0.3, 0.2];
        let anomaly_inf = [f64::INFINITY, 0.5, f64::INFINITY, f64::INFINITY];
        let a = ood_metrics(&normal, &anomaly).unwrap();
        let b = ood_metrics(&normal_inf, &anomaly_inf).unwrap();
        assert_eq!(a.auroc, b.auroc);
        assert_eq!(a.aupr_in, b.aupr_in);
        assert_eq!(a.aupr_out, b.aupr_out);
        assert_eq!(a.fpr_at_95_tpr, b.fpr_at_95_tpr);
        assert_eq!(a.auroc, pairwise_auroc(&normal_inf, &anomaly_inf));
        // The NaNs and the +inf form one tied group at the top.
        let roc = roc_curve(&normal, &anomaly);
        assert_eq!(
            roc.thresholds,
            vec![f64::INFINITY, f64::INFINITY, 0.5, 0.3, 0.2, 0.1]
        );
        assert_eq!(roc.tpr[1], 0.75);
        assert_eq!(roc.fpr[1], 0.25);
        // -0.0 and 0.0 tie.
        assert_eq!(auroc(&[-0.0], &[0.0]), 0.5);
    }

    #[test]
    fn property_matches_pairwise_definition_and_trapezoid() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for trial in 0..200 {
            let n = rng.random_range(1..40);
            let m = rng.random_range(1..40);
            let normal = random_scores(&mut rng, n, 0);
            let anomaly = random_scores(&mut rng, m, trial % 5);
            let a = auroc(&normal, &anomaly);
            assert_close(a, pairwise_auroc(&normal, &anomaly));
            let roc = roc_curve(&normal, &anomaly);
            assert_close(trapezoid(&roc), a);
            assert_eq!((roc.fpr[0], roc.tpr[0]), (0.0, 0.0));
            assert_eq!(
                (*roc.fpr.last().unwrap(), *roc.tpr.last().unwrap()),
                (1.0, 1.0)
            );
            assert!(roc
                .thresholds
                .windows(2)
                .all(|w| w[0] > w[1] || w[0].is_infinite()));
            assert_eq!(ood_metrics(&normal, &anomaly).unwrap().auroc, a);
        }
    }

    #[test]
    fn property_swapping_classes_gives_complement() {
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..200 {
            let n = rng.random_range(1..30);
            let m = rng.random_range(1..30);
            let normal = random_scores(&mut rng, n, 0);
            let anomaly = random_scores(&mut rng, m, 2);
            assert_close(auroc(&anomaly, &normal), 1.0 - auroc(&normal, &anomaly));
            // AP_in of (normal, anomaly) is AP_out of the swapped, negated problem.
            let m1 = ood_metrics(&normal, &anomaly).unwrap();
            let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
            let m2 = ood_metrics(&neg(&anomaly), &neg(&normal)).unwrap();
            assert_close(m1.aupr_in, m2.aupr_out);
            assert_close(m1.aupr_out, m2.aupr_in);
            assert_close(m1.auroc, m2.auroc);
        }
    }

    #[test]
    fn property_invariant_under_increasing_transform() {
        let mut rng = StdRng::seed_from_u64(7);
        let transforms: [fn(f64) -> f64; 3] = [f64::exp, |x| 3.0 * x + 1.0, |x| x * x * x];
        for _ in 0..100 {
            let n = rng.random_range(1..30);
            let m = rng.random_range(1..30);
            let normal = random_scores(&mut rng, n, -10);
            let anomaly = random_scores(&mut rng, m, -8);
            let base = ood_metrics(&normal, &anomaly).unwrap();
            for f in transforms {
                let tn: Vec<f64> = normal.iter().map(|&x| f(x)).collect();
                let ta: Vec<f64> = anomaly.iter().map(|&x| f(x)).collect();
                let t = ood_metrics(&tn, &ta).unwrap();
                assert_eq!(t.auroc, base.auroc);
                assert_close(t.aupr_in, base.aupr_in);
                assert_close(t.aupr_out, base.aupr_out);
                assert_eq!(t.fpr_at_95_tpr, base.fpr_at_95_tpr);
                assert_eq!(t.youden_tpr, base.youden_tpr);
                assert_eq!(t.youden_fpr, base.youden_fpr);
                assert_eq!(t.youden_threshold, f(base.youden_threshold));
            }
        }
    }

    #[test]
    fn property_fpr95_and_youden_agree_with_roc() {
        let mut rng = StdRng::seed_from_u64(99);
        for _ in 0..200 {
            let n = rng.random_range(1..50);
            let m = rng.random_range(1..50);
            let normal = random_scores(&mut rng, n, 0);
            let anomaly = random_scores(&mut rng, m, 3);
            let met = ood_metrics(&normal, &anomaly).unwrap();
            let roc = roc_curve(&normal, &anomaly);
            // The lowest FPR among points with TPR >= 0.95.
            let want = roc
                .tpr
                .iter()
                .zip(&roc.fpr)
                .filter(|(t, _)| **t >= 0.95)
                .map(|(_, f)| *f)
                .fold(f64::INFINITY, f64::min);
            assert_eq!(met.fpr_at_95_tpr, want);
            // Same maximal J (the float and exact tie-breaks may pick different
            // cutoffs of equal J).
            let (_, tpr, fpr) = youden(&roc).unwrap();
            assert_close(met.youden_tpr - met.youden_fpr, tpr - fpr);
            let i = roc
                .thresholds
                .iter()
                .position(|&t| t == met.youden_threshold)
                .unwrap();
            assert_eq!((roc.tpr[i], roc.fpr[i]), (met.youden_tpr, met.youden_fpr));
        }
    }
}
