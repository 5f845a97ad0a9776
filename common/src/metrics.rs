//! Metrics in Prometheus' text format (0.0.4), for both programs' `/metrics`: counter, gauge and
//! histogram families by labels, each a map from label values to a value behind a mutex held for
//! one update (one registry per process, as upstream's `legacyregistry`: the families are statics
//! each program lists).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// What every family does at scrape time.
pub trait Family: Sync {
    /// Writes the family's `# HELP`, `# TYPE` and samples.
    fn render(&self, out: &mut String);
}

/// The values of one family, by their label values joined with `\x1f`.
struct Series<T> {
    values: Mutex<BTreeMap<String, (Vec<String>, T)>>,
}

impl<T: Default + Clone> Series<T> {
    const fn new() -> Self {
        Series {
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn update(&self, labels: &[&str], f: impl FnOnce(&mut T)) {
        let key = labels.join("\u{1f}");
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let entry = values
            .entry(key)
            .or_insert_with(|| (labels.iter().map(|s| (*s).to_owned()).collect(), T::default()));
        f(&mut entry.1);
    }

    fn snapshot(&self) -> Vec<(Vec<String>, T)> {
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        values.values().cloned().collect()
    }
}

/// `{a="x",b="y"}` (with `extra` last, e.g. `le`), escaped as the format says.
fn label_set(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        pairs.push(format!("{n}=\"{v}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A counter (or a gauge: `kind`) by labels.
pub struct Vector {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    series: Series<f64>,
}

impl Vector {
    /// A counter family.
    pub const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Vector {
            name,
            help,
            kind: "counter",
            labels,
            series: Series::new(),
        }
    }

    /// A gauge family.
    pub const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Vector {
            name,
            help,
            kind: "gauge",
            labels,
            series: Series::new(),
        }
    }

    /// Adds `n` to the series of `labels` (a gauge may go down).
    pub fn add(&self, labels: &[&str], n: f64) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        self.series.update(labels, |v| *v += n);
    }

    /// Adds one.
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1.0);
    }

    /// Sets the series of `labels` (gauges).
    pub fn set(&self, labels: &[&str], n: f64) {
        self.series.update(labels, |v| *v = n);
    }
}

impl std::fmt::Debug for Vector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Family for Vector {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, self.kind);
        for (values, v) in self.series.snapshot() {
            let _ = writeln!(
                out,
                "{}{} {}",
                self.name,
                label_set(self.labels, &values, None),
                number(v)
            );
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Buckets {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram family by labels.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    series: Series<Buckets>,
}

impl Histogram {
    /// A histogram family with upper bounds `bounds` (ascending; `+Inf` is implied).
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        Histogram {
            name,
            help,
            labels,
            bounds,
            series: Series::new(),
        }
    }

    /// Records one observation of `v` (seconds, for durations).
    pub fn observe(&self, labels: &[&str], v: f64) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        let slot = self.bounds.iter().position(|b| v <= *b);
        let n = self.bounds.len();
        self.series.update(labels, |h| {
            if h.counts.len() != n {
                h.counts = vec![0; n];
            }
            if let Some(i) = slot {
                h.counts[i] += 1;
            }
            h.sum += v;
            h.count += 1;
        });
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Family for Histogram {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        for (values, h) in self.series.snapshot() {
            let mut cumulative = 0;
            for (bound, n) in self.bounds.iter().zip(&h.counts) {
                cumulative += n;
                let le = number(*bound);
                let labels = label_set(self.labels, &values, Some(("le", &le)));
                let _ = writeln!(out, "{}_bucket{labels} {cumulative}", self.name);
            }
            let labels = label_set(self.labels, &values, Some(("le", "+Inf")));
            let _ = writeln!(out, "{}_bucket{labels} {}", self.name, h.count);
            let plain = label_set(self.labels, &values, None);
            let _ = writeln!(out, "{}_sum{plain} {}", self.name, number(h.sum));
            let _ = writeln!(out, "{}_count{plain} {}", self.name, h.count);
        }
    }
}

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Holds one unit of a gauge while it lives (an open watch, a request in flight).
pub struct Held {
    gauge: &'static Vector,
    labels: Vec<String>,
}

impl Held {
    /// Adds one to `gauge`'s series of `labels` until dropped.
    pub fn new(gauge: &'static Vector, labels: &[&str]) -> Self {
        gauge.add(labels, 1.0);
        Held {
            gauge,
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        self.gauge.add(&labels, -1.0);
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("gauge", &self.gauge.name).finish()
    }
}

/// `families` in Prometheus' text format.
pub fn render(families: &[&dyn Family]) -> String {
    let mut out = String::new();
    for family in families {
        family.render(&mut out);
    }
    out
}
