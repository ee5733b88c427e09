//! Shared by the engine's benchmark examples: ABBA ordering and summaries.
#![allow(dead_code)]

pub mod plain;

use std::time::Duration;

/// `n` runs of each of two sides in ABBA order (A B B A A B ...): on this host
/// every other boot in a row is ~10% slower whichever side runs it (first-touch
/// cost of the guest's memory, an artefact of the machine, not of either side),
/// so each side gets as many slow turns as fast ones.
pub async fn abba<TA, TB, FA, FB>(
    n: usize,
    mut a: impl FnMut(usize) -> FA,
    mut b: impl FnMut(usize) -> FB,
) -> anyhow::Result<(Vec<TA>, Vec<TB>)>
where
    FA: std::future::Future<Output = anyhow::Result<TA>>,
    FB: std::future::Future<Output = anyhow::Result<TB>>,
{
    let (mut va, mut vb) = (Vec::new(), Vec::new());
    for i in 0..n {
        if i % 2 == 1 {
            vb.push(b(i).await?);
        }
        va.push(a(i).await?);
        if i % 2 == 0 {
            vb.push(b(i).await?);
        }
    }
    Ok((va, vb))
}

/// One row per side and their ratio, medians and p90s, in whole milliseconds.
pub fn pair(label_a: &str, a: &mut [Duration], label_b: &str, b: &mut [Duration]) {
    pair_to(0, label_a, a, label_b, b)
}

/// [`pair`] with `decimals` digits of milliseconds (for sub-millisecond calls).
pub fn pair_to(
    decimals: usize,
    label_a: &str,
    a: &mut [Duration],
    label_b: &str,
    b: &mut [Duration],
) {
    pair_at(decimals, 0.9, label_a, a, label_b, b)
}

/// [`pair_to`] with the median and the `hi` quantile (0.99: p99).
pub fn pair_at(
    decimals: usize,
    hi: f64,
    label_a: &str,
    a: &mut [Duration],
    label_b: &str,
    b: &mut [Duration],
) {
    let (a50, ahi) = (pct(a, 0.5), pct(a, hi));
    let (b50, bhi) = (pct(b, 0.5), pct(b, hi));
    let d = decimals;
    println!("  {:<38} {:>10.d$} {:>10.d$}", label_a, ms(a50), ms(ahi));
    println!("  {:<38} {:>10.d$} {:>10.d$}", label_b, ms(b50), ms(bhi));
    println!(
        "  ratio: median {:.3}, p{:.0} {:.3}",
        ms(a50) / ms(b50),
        hi * 100.0,
        ms(ahi) / ms(bhi)
    );
}

pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
