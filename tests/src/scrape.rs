//! Reading `/metrics` as Prometheus would: the text parsed by an exposition-format parser,
//! then looked up by name and labels.

use prometheus_parse::{Scrape, Value};

/// One scrape of a metrics listener.
#[derive(Debug)]
pub struct Scraped(Scrape);

impl Scraped {
    /// Parses `text` (the OpenMetrics text a listener serves).
    ///
    /// # Panics
    /// When the text does not parse: the test's failure.
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Self(Scrape::parse(lines).expect("the exposition format parses"))
    }

    /// The sum of the samples named `name` whose labels include `labels` (0 when none):
    /// counters by their `_total` name, gauges by theirs, a histogram's count by `<name>_count`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .filter(|sample| labels.iter().all(|(key, value)| sample.labels.get(key) == Some(*value)))
            .map(|sample| match sample.value {
                Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => value,
                Value::Histogram(_) | Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// How many observations histogram `name` holds (its `_count`), for samples with `labels`.
    pub fn observations(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(&format!("{name}_count"), labels)
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.samples.iter().any(|sample| sample.metric == name)
    }

    /// Every label value of `label` among the samples named `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .0
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .filter_map(|sample| sample.labels.get(label).map(str::to_owned))
            .collect();
        values.sort();
        values.dedup();
        values
    }
}
