//! Reading Prometheus text in tests with a parser, not by matching strings.

use prometheus_parse::{Scrape, Value};

/// The value of the one sample named `metric` whose labels include `labels` (a counter, gauge or
/// untyped sample); fails the test unless exactly one matches.
pub fn sample(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .filter_map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "one sample {metric}{labels:?}, found {found:?}");
    found[0]
}
