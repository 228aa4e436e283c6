//! The trend fit and its verdicts on series of known shape, and their error rates under noise.
#![expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "generated series: small counts, non-negative times"
)]

use super::*;

/// Deterministic noise: xorshift64 + Box-Muller.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn gauss(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-12);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// `n` samples every `dt` seconds of `f(t)` plus gaussian noise of `sd`.
fn series(n: usize, dt: f64, sd: f64, rng: &mut Rng, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            let t = i as f64 * dt;
            (t, (f(t) + sd * rng.gauss()).max(0.0))
        })
        .collect()
}

fn judge(s: &[(f64, f64)]) -> Trend {
    classify(s, &Params::default())
}

const MB: f64 = 1024.0 * 1024.0;

#[test]
fn series_are_thinned_evenly_keeping_both_ends() {
    assert_eq!(thin_indices(5, 3), [0, 2, 4]);
    assert_eq!(thin_indices(2, 3), [0, 1]);
}

#[test]
fn linear_leak() {
    let mut rng = Rng(1);
    let s = series(30, 5.0, 2048.0, &mut rng, |t| MB + 1024.0 * t);
    let t = judge(&s);
    assert_eq!(t.verdict, Verdict::Leak, "{t:?}");
    assert!((t.rate_per_s - 1024.0).abs() < 102.4, "{t:?}");
    assert!(t.confidence > 0.99, "{t:?}");
    assert!((t.rate_per_hour() - 1024.0 * 3600.0).abs() < 102.4 * 3600.0);
}

#[test]
fn slow_leak_under_noise() {
    // 50 B/s under noise of 2 KiB: invisible between two snapshots, clear over 60.
    let mut rng = Rng(2);
    let s = series(60, 10.0, 2048.0, &mut rng, |t| 8.0 * MB + 50.0 * t);
    let t = judge(&s);
    assert_eq!(t.verdict, Verdict::Leak, "{t:?}");
    assert!((t.rate_per_s - 50.0).abs() < 15.0, "{t:?}");
}

#[test]
fn sawtooth_is_not_a_leak() {
    // A buffer that grows for 5 samples and is released, over and over.
    let mut rng = Rng(3);
    let s =
        series(40, 5.0, 512.0, &mut rng, |t| MB + 64.0 * 1024.0 * ((t / 5.0) as u64 % 5) as f64);
    assert_eq!(judge(&s).verdict, Verdict::Stable, "{:?}", judge(&s));
}

#[test]
fn cache_that_fills_then_plateaus() {
    let mut rng = Rng(4);
    let s = series(40, 5.0, 1024.0, &mut rng, |t| MB + 8.0 * 1024.0 * t.min(80.0));
    let t = judge(&s);
    assert_eq!(t.verdict, Verdict::Plateau, "{t:?}");
    assert!(t.recent_rate_per_s.abs() < 100.0, "{t:?}");
    assert!(t.confidence > 0.9, "{t:?}");
}

#[test]
fn step_change_is_a_plateau_not_a_leak() {
    let mut rng = Rng(5);
    let s = series(30, 5.0, 1024.0, &mut rng, |t| if t < 70.0 { MB } else { 2.0 * MB });
    let t = judge(&s);
    assert_eq!(t.verdict, Verdict::Plateau, "{t:?}");
}

#[test]
fn leak_after_a_startup_step_is_a_leak_not_a_plateau() {
    let mut rng = Rng(11);
    // Series start at 0 when the probes attach: a working set appears at once, then a
    // leak keeps going.
    for (n, step) in [(30, 10.0 * MB), (60, 100.0 * MB)] {
        let s =
            series(
                n,
                1.0,
                1024.0,
                &mut rng,
                |t| {
                    if t < 0.5 { 0.0 } else { step + 10.0 * 1024.0 * t }
                },
            );
        assert_eq!(judge(&s).verdict, Verdict::Leak, "{:?}", judge(&s));
    }
    // A working set filled over 10 s, then 1 MiB a minute.
    let s = series(300, 1.0, 4096.0, &mut rng, |t| 50.0 * MB * t.min(10.0) + MB * t / 60.0);
    assert_eq!(judge(&s).verdict, Verdict::Leak, "{:?}", judge(&s));
}

#[test]
fn a_series_that_just_levelled_off_is_not_yet_a_leak() {
    // A cache that filled, sampled six times, the last two level: growing, not leak.
    let s: Vec<(f64, f64)> =
        [(0.0, 0.0), (0.02, 4.0), (0.27, 44.0), (0.52, 84.0), (1.29, 128.0), (1.54, 128.0)]
            .iter()
            .map(|&(t, k)| (t, k * 1024.0))
            .collect();
    assert_eq!(judge(&s).verdict, Verdict::Growing, "{:?}", judge(&s));
    assert_eq!(flat_tail(&s, 4096.0), 2);
}

#[test]
fn autocorrelation_inflates_the_variance() {
    // White noise: no significant lag, no correction.
    let mut rng = Rng(12);
    let white: Vec<f64> = (0..100).map(|_| rng.gauss()).collect();
    assert!(autocorrelation_factor(&white) < 1.5, "{}", autocorrelation_factor(&white));
    // A random walk: strongly correlated.
    let mut x = 0.0;
    let walk: Vec<f64> = (0..100)
        .map(|_| {
            x += rng.gauss();
            x
        })
        .collect();
    assert!(autocorrelation_factor(&walk) > 3.0, "{}", autocorrelation_factor(&walk));
    assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
    assert!((autocorrelation_factor(&[1.0, 1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
}

#[test]
fn burst_that_is_freed() {
    let mut rng = Rng(6);
    let s =
        series(
            30,
            5.0,
            1024.0,
            &mut rng,
            |t| {
                if (50.0..65.0).contains(&t) { 10.0 * MB } else { MB }
            },
        );
    assert_eq!(judge(&s).verdict, Verdict::Stable, "{:?}", judge(&s));
}

#[test]
fn flat_and_shrinking_series_are_stable() {
    let mut rng = Rng(7);
    let flat = series(30, 5.0, 4096.0, &mut rng, |_| 4.0 * MB);
    assert_eq!(judge(&flat).verdict, Verdict::Stable, "{:?}", judge(&flat));
    let shrinking = series(30, 5.0, 1024.0, &mut rng, |t| 4.0 * MB - 1000.0 * t);
    assert_eq!(judge(&shrinking).verdict, Verdict::Stable);
}

#[test]
fn too_few_samples_is_growing_at_most() {
    let s = [(0.0, MB), (5.0, MB + 50_000.0), (10.0, MB + 100_000.0), (15.0, MB + 150_000.0)];
    let t = judge(&s);
    assert_eq!(t.verdict, Verdict::Growing, "{t:?}");
    assert!((t.rate_per_s - 10_000.0).abs() < 1.0);
    assert_eq!(judge(&s[..2]).verdict, Verdict::Growing);
    assert!((judge(&s[..2]).rate_per_s - 10_000.0).abs() < 1e-9);
    assert_eq!(judge(&[]).verdict, Verdict::Stable);
    assert_eq!(judge(&s[..1]).samples, 1);
}

#[test]
fn statistics_match_known_values() {
    // A perfectly increasing series of 10: S = 45, var = 125, z = 44/sqrt(125) = 3.935.
    let s: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), f64::from(i * 3))).collect();
    let p = mann_kendall_p_up(&s);
    assert!((p - 4.16e-5).abs() < 0.5e-5, "{p}");
    assert!((theil_sen(&s) - 3.0).abs() < 1e-12);
    // Constant: all ties, no trend.
    let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 7.0)).collect();
    assert!((mann_kendall_p_up(&flat) - 1.0).abs() < 1e-12);
    assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
    assert!((normal_cdf(1.96) - 0.975).abs() < 1e-4);
}

/// Zero-drift series whose noise is autocorrelated (AR(1): queues, buffers in flight),
/// and leaks under the same noise. No test tells a trend from a wander slower than the
/// window, so the bound holds for windows of at least 6 correlation times (1 / (1 - phi)
/// samples); a random walk (phi = 1) is measured too, with a looser bound.
#[test]
fn error_rates_under_autocorrelated_noise() {
    let step = 16.0 * 1024.0;
    let rates = |cases: &[(f64, usize)], seed: u64| {
        let mut rng = Rng(seed);
        let (mut clean, mut alarms, mut leaks, mut missed) = (0, 0, 0, 0);
        for &(phi, n) in cases {
            for i in 0..120 {
                // Half of them leak 2 noise steps per sample.
                let drift = if i % 2 == 0 { 0.0 } else { 2.0 * step };
                let mut x = 0.0;
                let s: Vec<(f64, f64)> = (0..n)
                    .map(|t| {
                        x = phi * x + step * rng.gauss();
                        (t as f64, 32.0 * MB + drift * t as f64 + x)
                    })
                    .collect();
                let v = judge(&s).verdict;
                if drift == 0.0 {
                    clean += 1;
                    alarms += i32::from(v == Verdict::Leak);
                } else {
                    leaks += 1;
                    missed += i32::from(v != Verdict::Leak);
                }
            }
        }
        (f64::from(alarms) / f64::from(clean), f64::from(missed) / f64::from(leaks))
    };
    let long_enough = [
        (0.5, 30),
        (0.8, 30),
        (0.8, 60),
        (0.9, 60),
        (0.9, 120),
        (0.95, 120),
        (0.95, 240),
        (0.99, 240),
    ];
    let (alarm_rate, miss_rate) = rates(&long_enough, 0xac);
    eprintln!("AR(1): false positives {alarm_rate:.3}, false negatives {miss_rate:.3}");
    assert!(alarm_rate <= 0.05, "false-positive rate {alarm_rate}");
    assert!(miss_rate <= 0.05, "false-negative rate {miss_rate}");
    let (alarm_rate, miss_rate) = rates(&[(1.0, 30), (1.0, 60), (1.0, 120), (1.0, 240)], 0xad);
    eprintln!("random walk: false positives {alarm_rate:.3}, false negatives {miss_rate:.3}");
    assert!(alarm_rate <= 0.15, "false-positive rate {alarm_rate}");
    assert!(miss_rate <= 0.05, "false-negative rate {miss_rate}");
}

/// False-positive and false-negative rates over a generated population of series.
#[test]
fn error_rates_over_many_series() {
    let mut rng = Rng(0x5eed);
    let n = 24;
    let dt = 5.0;
    let (mut leaks, mut missed) = (0, 0);
    let mut examples = Vec::new();
    for _ in 0..300 {
        let base = (1.0 + 20.0 * rng.next_f64()) * MB;
        let slope = 100.0 + 5000.0 * rng.next_f64();
        // Noise up to a third of the growth over the window: a leak a person would call one.
        let sd = slope * dt * n as f64 / 3.0 * rng.next_f64();
        let s = series(n, dt, sd, &mut rng, |t| base + slope * t);
        leaks += 1;
        if judge(&s).verdict != Verdict::Leak {
            missed += 1;
            examples.push(format!("missed slope {slope:.0} sd {sd:.0}: {:?}", judge(&s)));
        }
    }
    let (mut clean, mut false_alarms) = (0, 0);
    for i in 0..600 {
        let base = (1.0 + 20.0 * rng.next_f64()) * MB;
        let amp = (10.0 + 500.0 * rng.next_f64()) * 1024.0;
        let sd = amp * 0.2 * rng.next_f64();
        let knee = dt * n as f64 * (0.2 + 0.3 * rng.next_f64());
        let s = match i % 5 {
            // Flat noise.
            0 => series(n, dt, amp * 0.1, &mut rng, |_| base),
            // A cache filling until the knee, then full.
            1 => series(n, dt, sd, &mut rng, |t| base + amp * (t.min(knee) / knee)),
            // Sawtooth.
            2 => series(n, dt, sd, &mut rng, |t| base + amp * ((t / dt) as u64 % 4) as f64 / 3.0),
            // A burst, freed.
            3 => series(n, dt, sd, &mut rng, |t| {
                if (knee..knee + 3.0 * dt).contains(&t) { base + amp } else { base }
            }),
            // A step.
            _ => series(n, dt, sd, &mut rng, |t| if t < knee { base } else { base + amp }),
        };
        clean += 1;
        if judge(&s).verdict == Verdict::Leak {
            false_alarms += 1;
            examples.push(format!(
                "false alarm class {} amp {amp:.0} sd {sd:.0}: {:?}",
                i % 5,
                judge(&s)
            ));
        }
    }
    let miss_rate = f64::from(missed) / f64::from(leaks);
    let alarm_rate = f64::from(false_alarms) / f64::from(clean);
    eprintln!(
        "false negatives {miss_rate:.3} ({missed}/{leaks}), false positives {alarm_rate:.3} ({false_alarms}/{clean})"
    );
    assert!(miss_rate <= 0.05, "false-negative rate {miss_rate}: {examples:#?}");
    assert!(alarm_rate <= 0.02, "false-positive rate {alarm_rate}: {examples:#?}");
}
