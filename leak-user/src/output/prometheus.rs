//! Pure: metrics in the Prometheus text exposition format (version 0.0.4), for the node
//! agent's `/metrics` (#6): `# HELP` and `# TYPE` per family, then one line per sample.
use std::fmt::Write as _;

/// `Content-Type` of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (resets when the process restarts).
    Counter,
}

/// One sample: labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Label names and values, in order.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// A metric family: its samples share name, help and type.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// Metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    pub name: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// Type.
    pub kind: Kind,
    /// Samples.
    pub samples: Vec<Sample>,
}

impl Family {
    /// A family without samples yet.
    #[must_use]
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        debug_assert!(valid_name(name, true), "metric name {name}");
        Self { name, help, kind, samples: Vec::new() }
    }

    /// Adds a sample.
    pub fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        debug_assert!(labels.iter().all(|(n, _)| valid_name(n, false)), "{labels:?}");
        self.samples.push(Sample { labels, value });
    }
}

fn valid_name(name: &str, colons: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic()
            || c == '_'
            || (colons && c == ':')
            || (!first && c.is_ascii_digit())
    };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

/// A label value, escaped: backslash, double quote and newline.
fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A value as the format writes it (`NaN`, `+Inf`, `-Inf`; integers without a fraction).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

/// The exposition of `families`, in order (families without samples are left out).
#[must_use]
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let kind = match f.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {} {help}\n# TYPE {} {kind}", f.name, f.name);
        for s in &f.samples {
            out.push_str(f.name);
            if !s.labels.is_empty() {
                let labels: Vec<String> =
                    s.labels.iter().map(|(n, v)| format!("{n}=\"{}\"", escape_value(v))).collect();
                let _ = write!(out, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(out, " {}", number(s.value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_help_type_and_escaped_labels() {
        let mut bytes = Family::new(
            "leak_site_outstanding_bytes",
            Kind::Gauge,
            "Bytes allocated at a site and not freed.",
        );
        bytes.push(vec![("pod", "api-7d9\"x\\y".into()), ("function", "a\nb".into())], 40960.0);
        bytes.push(vec![], 1.5);
        let mut drops = Family::new("leak_drops_total", Kind::Counter, "Events lost.");
        drops.push(vec![("reason", "alloc_map_full".into())], 0.0);
        let empty = Family::new("leak_unused", Kind::Gauge, "Never filled.");
        let mut special = Family::new("leak_rate", Kind::Gauge, "Rates.");
        special.push(vec![("k", "nan".into())], f64::NAN);
        special.push(vec![("k", "inf".into())], f64::INFINITY);
        special.push(vec![("k", "ninf".into())], f64::NEG_INFINITY);
        assert_eq!(
            render(&[bytes, drops, empty, special]),
            "# HELP leak_site_outstanding_bytes Bytes allocated at a site and not freed.\n\
             # TYPE leak_site_outstanding_bytes gauge\n\
             leak_site_outstanding_bytes{pod=\"api-7d9\\\"x\\\\y\",function=\"a\\nb\"} 40960\n\
             leak_site_outstanding_bytes 1.5\n\
             # HELP leak_drops_total Events lost.\n\
             # TYPE leak_drops_total counter\n\
             leak_drops_total{reason=\"alloc_map_full\"} 0\n\
             # HELP leak_rate Rates.\n\
             # TYPE leak_rate gauge\n\
             leak_rate{k=\"nan\"} NaN\n\
             leak_rate{k=\"inf\"} +Inf\n\
             leak_rate{k=\"ninf\"} -Inf\n"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("leak_site_bytes", true));
        assert!(valid_name("ns:metric", true));
        assert!(!valid_name("ns:label", false));
        assert!(!valid_name("9lives", true));
        assert!(!valid_name("", true));
        assert!(!valid_name("with-dash", true));
    }
}
