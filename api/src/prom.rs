//! Reading the Prometheus text exposition format (version 0.0.4) the admin endpoints serve:
//! one parser for `causeway drill`, `causeway status`, the benchmarks and the tests.
//!
//! Comment lines (`# HELP`, `# TYPE`) are skipped; a line that does not parse is skipped too
//! (a reader of metrics must not fail on one odd line). Label values are unescaped (`\\`, `\"`,
//! `\n`); a sample's optional timestamp is ignored.

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sample has every `(label, value)` of `want`.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(v))
    }
}

/// Every sample of `text`, in order.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(parse_line)
}

/// The sum of the samples of metric `name` that have every `(label, value)` of `labels` (all of
/// its series when `labels` is empty); `None` when there is no such sample.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .filter(|s| s.name == name && s.has(labels))
        .fold(None, |acc, s| Some(acc.unwrap_or(0.0) + s.value))
}

/// [`sum`] by a selector as the exposition writes a series: `name` or `name{k="v",...}` (the
/// samples that have those labels, whatever others they have). `None` for a selector that does
/// not parse, too.
pub fn series(text: &str, selector: &str) -> Option<f64> {
    let selector = selector.trim();
    let (name, labels) = match selector.split_once('{') {
        None => (selector, Vec::new()),
        Some((name, rest)) => {
            let mut labels = Vec::new();
            let tail = parse_labels(rest, &mut labels)?;
            if !tail.trim().is_empty() {
                return None;
            }
            (name, labels)
        }
    };
    let want: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sum(text, name, &want)
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = parse_labels(r, &mut labels)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next()?)?;
    // An optional timestamp, then nothing.
    if fields.nth(1).is_some() {
        return None;
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `k="v",...}` and returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(&'a str, String)>) -> Option<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(r) = s.strip_prefix('}') {
            return Some(r);
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if key.is_empty() {
            return None;
        }
        let r = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key, value));
        s = r[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP causeway_gateway_requests_total Requests.
# TYPE causeway_gateway_requests_total counter
causeway_gateway_requests_total{direction="outbound",service="demo/echo",code="200"} 7
causeway_gateway_requests_total{direction="outbound",service="demo/echo",code="503"} 2
causeway_gateway_requests_total{direction="inbound",service="demo/echo",code="200"} 3 1700000000000
causeway_gateway_requests_total_extra 100
causeway_up 1
odd{reason="a \"quoted\", comma\\ and\nnewline"} 4
causeway_latency_bucket{le="+Inf"} +Inf
not a sample line
broken{k="v" 1
"#;

    #[test]
    fn sums_the_series_that_have_the_labels() {
        let name = "causeway_gateway_requests_total";
        assert_eq!(sum(TEXT, name, &[]), Some(12.0));
        assert_eq!(sum(TEXT, name, &[("direction", "outbound")]), Some(9.0));
        assert_eq!(
            sum(TEXT, name, &[("direction", "outbound"), ("code", "503")]),
            Some(2.0)
        );
        assert_eq!(sum(TEXT, name, &[("code", "404")]), None);
        assert_eq!(sum(TEXT, "causeway_up", &[]), Some(1.0));
        assert_eq!(
            sum(TEXT, "causeway_gateway_requests", &[]),
            None,
            "whole names only"
        );
    }

    #[test]
    fn a_selector_names_a_series_as_the_exposition_writes_it() {
        let name = "causeway_gateway_requests_total";
        assert_eq!(series(TEXT, name), Some(12.0));
        assert_eq!(series(TEXT, &format!("{name}{{code=\"200\"}}")), Some(10.0));
        assert_eq!(
            series(
                TEXT,
                &format!("{name}{{direction=\"inbound\",code=\"200\"}}")
            ),
            Some(3.0)
        );
        assert_eq!(series(TEXT, "causeway_up "), Some(1.0));
        assert_eq!(
            series(TEXT, &format!("{name}{{code=\"200\"")),
            None,
            "unclosed"
        );
    }

    #[test]
    fn label_values_are_unescaped_and_odd_lines_skipped() {
        let all: Vec<Sample<'_>> = samples(TEXT).collect();
        assert_eq!(all.len(), 7, "{all:?}");
        let odd = all.iter().find(|s| s.name == "odd").unwrap();
        assert_eq!(
            odd.label("reason"),
            Some("a \"quoted\", comma\\ and\nnewline")
        );
        let inf = all
            .iter()
            .find(|s| s.name == "causeway_latency_bucket")
            .unwrap();
        assert_eq!((inf.label("le"), inf.value), (Some("+Inf"), f64::INFINITY));
    }
}
