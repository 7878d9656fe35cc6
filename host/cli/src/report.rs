//! Reach and frequency beside the ground truth, as a table or as JSON.

use std::collections::BTreeMap;

/// What the numbers mean (printed under a table).
pub const LEGEND: &str = "reach = distinct people reached; frequency k = share of the reached \
     people seen k times; the last row, k+, is \"k or more\"";

/// The distribution with every bucket `"1"..="n"` (a missing bucket is 0); empty for n = 0
/// (reach-only).
pub fn complete(dist: &BTreeMap<String, f64>, n: u32) -> BTreeMap<String, f64> {
    (1..=n)
        .map(|k| {
            let key = k.to_string();
            let v = dist.get(&key).copied().unwrap_or(0.0);
            (key, v)
        })
        .collect()
}

/// Relative distribution of a histogram of counts keyed by decimal frequency: buckets
/// `"1"..="n"`, each count divided by `reach`; frequencies above `n` fall into `n`.
pub fn proportions(counts: &BTreeMap<String, f64>, reach: i64, n: u32) -> BTreeMap<String, f64> {
    let mut capped: BTreeMap<String, f64> = BTreeMap::new();
    for (k, c) in counts {
        let Ok(f) = k.parse::<u64>() else { continue };
        if f == 0 {
            continue;
        }
        *capped.entry(f.min(u64::from(n)).to_string()).or_default() += c;
    }
    let reach = reach.max(1) as f64;
    complete(&capped, n)
        .into_iter()
        .map(|(k, c)| (k, c / reach))
        .collect()
}

/// A JSON object of a distribution.
pub fn json(dist: &BTreeMap<String, f64>) -> serde_json::Value {
    serde_json::Value::Object(
        dist.iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect(),
    )
}

/// Prints reach and the frequency distribution (buckets 1..=n, n = 0 for reach-only), with
/// the ground truth beside them when known, and the legend.
pub fn print_table(
    reach: i64,
    frequency: &BTreeMap<String, f64>,
    truth: Option<(i64, &BTreeMap<String, f64>)>,
    n: u32,
) {
    match truth {
        Some((r, _)) => println!("reach: {reach} (ground truth {r})"),
        None => println!("reach: {reach}"),
    }
    if n == 0 {
        println!("frequency: not measured (reach only)");
    } else {
        let result = complete(frequency, n);
        let expected = truth.map(|(_, t)| complete(t, n));
        match &expected {
            Some(_) => println!("frequency  result    truth"),
            None => println!("frequency  result"),
        }
        for k in 1..=n {
            let key = k.to_string();
            let label = if k == n { format!("{k}+") } else { key.clone() };
            let r = result.get(&key).copied().unwrap_or(0.0);
            match &expected {
                Some(e) => println!(
                    "{label:>9}  {r:<8.4}  {:.4}",
                    e.get(&key).copied().unwrap_or(0.0)
                ),
                None => println!("{label:>9}  {r:.4}"),
            }
        }
    }
    println!("note: {LEGEND}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: &[(&str, f64)]) -> BTreeMap<String, f64> {
        v.iter().map(|(k, x)| (k.to_string(), *x)).collect()
    }

    #[test]
    fn complete_fills_every_bucket() {
        let d = complete(&map(&[("1", 0.5), ("3", 0.5)]), 3);
        assert_eq!(d, map(&[("1", 0.5), ("2", 0.0), ("3", 0.5)]));
        assert!(complete(&map(&[("1", 1.0)]), 0).is_empty());
    }

    #[test]
    fn proportions_cap_at_n() {
        let d = proportions(&map(&[("1", 2.0), ("2", 1.0), ("5", 1.0)]), 4, 2);
        assert_eq!(d, map(&[("1", 0.5), ("2", 0.5)]));
        assert_eq!(proportions(&BTreeMap::new(), 0, 1), map(&[("1", 0.0)]));
    }
}
