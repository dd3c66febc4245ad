//! Evaluation of the engine on a labelled corpus (pure: the caller reads the data).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::detect::{Action, Engine};
use crate::http::{Parsed, parse_request};

/// One labelled request.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub id: &'a str,
    pub source: &'a str,
    /// `attack` or `benign`.
    pub label: &'a str,
    pub category: &'a str,
    pub raw: &'a [u8],
}

/// Counts for one group of attack samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recall {
    pub total: usize,
    /// Action was `Ban`.
    pub banned: usize,
    /// Action was `Alert` or `Ban`.
    pub flagged: usize,
    /// Could not be parsed as HTTP (counted as not detected).
    pub unparseable: usize,
}

impl Recall {
    /// Ban recall in percent.
    pub fn ban_pct(&self) -> f64 {
        pct(self.banned, self.total)
    }
    /// Alert-or-ban recall in percent.
    pub fn flag_pct(&self) -> f64 {
        pct(self.flagged, self.total)
    }
}

fn pct(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        100.0 * n as f64 / d as f64
    }
}

/// Evaluation result.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Per attack category.
    pub by_category: BTreeMap<String, Recall>,
    /// Per (category, source), keyed `category/source`.
    pub by_category_source: BTreeMap<String, Recall>,
    pub benign_total: usize,
    /// Benign requests banned (false positives).
    pub benign_banned: usize,
    /// Benign requests alerted but not banned.
    pub benign_alerted: usize,
    pub benign_unparseable: usize,
    /// Ids of banned benign samples (first 50), for inspection.
    pub false_positive_ids: Vec<String>,
    /// Ids of alerted (not banned) benign samples (first 50), for inspection.
    pub benign_alert_ids: Vec<String>,
    /// Ids of attack samples not banned (first 100 per category and source).
    pub missed_ids: Vec<String>,
}

impl Report {
    /// False-positive rate (bans among benign) in percent.
    pub fn fp_pct(&self) -> f64 {
        pct(self.benign_banned, self.benign_total)
    }
}

/// Runs the engine on every sample.
pub fn evaluate<'a>(engine: &Engine, samples: impl IntoIterator<Item = Sample<'a>>) -> Report {
    let mut r = Report::default();
    for s in samples {
        let action = match parse_request(s.raw) {
            Ok(Parsed::Complete { msg, .. }) => Some(engine.verdict(&engine.inspect_request(&msg))),
            _ => None,
        };
        if s.label == "benign" {
            r.benign_total += 1;
            match action {
                Some(Action::Ban) => {
                    r.benign_banned += 1;
                    if r.false_positive_ids.len() < 50 {
                        r.false_positive_ids.push(s.id.to_owned());
                    }
                }
                Some(Action::Alert) => {
                    r.benign_alerted += 1;
                    if r.benign_alert_ids.len() < 50 {
                        r.benign_alert_ids.push(s.id.to_owned());
                    }
                }
                Some(Action::Allow) => {}
                None => r.benign_unparseable += 1,
            }
            continue;
        }
        for rec in [
            r.by_category.entry(s.category.to_owned()).or_default(),
            r.by_category_source
                .entry(format!("{}/{}", s.category, s.source))
                .or_default(),
        ] {
            rec.total += 1;
            match action {
                Some(Action::Ban) => {
                    rec.banned += 1;
                    rec.flagged += 1;
                }
                Some(Action::Alert) => rec.flagged += 1,
                Some(Action::Allow) => {}
                None => rec.unparseable += 1,
            }
        }
        let key = format!("{}/{}", s.category, s.source);
        let missed_here = r
            .by_category_source
            .get(&key)
            .map_or(0, |c| c.total - c.banned);
        if action != Some(Action::Ban) && missed_here <= 100 {
            r.missed_ids.push(s.id.to_owned());
        }
    }
    r
}

/// Result of [`throughput`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Throughput {
    /// Requests run through parse, inspection and verdict (all passes).
    pub requests: usize,
    /// Of those, requests banned.
    pub banned: usize,
    /// Wall-clock time of the whole run.
    pub seconds: f64,
}

impl Throughput {
    /// Requests per second on the calling thread.
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Measures single-threaded throughput: `passes` rounds over `raws`, each request
/// parsed, inspected and given a verdict, as the agent does. Unparseable requests
/// count as processed.
pub fn throughput(engine: &Engine, raws: &[&[u8]], passes: usize) -> Throughput {
    let start = std::time::Instant::now();
    let mut requests = 0;
    let mut banned = 0;
    for _ in 0..passes {
        for raw in raws {
            if let Ok(Parsed::Complete { msg, .. }) = parse_request(raw) {
                let v = engine.inspect_request(&msg);
                if engine.verdict(&v) == Action::Ban {
                    banned += 1;
                }
            }
            requests += 1;
        }
    }
    Throughput {
        requests,
        banned,
        seconds: start.elapsed().as_secs_f64(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:>7} {:>7} {:>8} {:>9} {:>7}",
            "attack group", "total", "ban%", "alert+%", "unparsed", "missed"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, r: &Recall| {
            writeln!(
                f,
                "{:<28} {:>7} {:>6.2}% {:>7.2}% {:>9} {:>7}",
                name,
                r.total,
                r.ban_pct(),
                r.flag_pct(),
                r.unparseable,
                r.total - r.banned
            )
        };
        for (k, v) in &self.by_category {
            row(f, k, v)?;
        }
        writeln!(f)?;
        for (k, v) in &self.by_category_source {
            row(f, &format!("  {k}"), v)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "benign: {} total, {} banned (false positives, {:.3}%), {} alerted ({:.2}%), {} unparseable",
            self.benign_total,
            self.benign_banned,
            self.fp_pct(),
            self.benign_alerted,
            pct(self.benign_alerted, self.benign_total),
            self.benign_unparseable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::DetectConfig;

    #[test]
    fn counts() {
        let e = Engine::new(DetectConfig::default());
        let samples = [
            Sample {
                id: "a",
                source: "t",
                label: "attack",
                category: "sqli",
                raw: b"GET /?q=1%20union%20select%201,2 HTTP/1.1\r\n\r\n",
            },
            Sample {
                id: "b",
                source: "t",
                label: "attack",
                category: "sqli",
                raw: b"garbage",
            },
            Sample {
                id: "c",
                source: "t",
                label: "benign",
                category: "benign",
                raw: b"GET /?q=hello HTTP/1.1\r\n\r\n",
            },
        ];
        let r = evaluate(&e, samples);
        let s = &r.by_category["sqli"];
        assert_eq!((s.total, s.banned, s.unparseable), (2, 1, 1));
        assert_eq!((r.benign_total, r.benign_banned), (1, 0));
        assert_eq!(r.missed_ids, vec!["b".to_owned()]);
        assert!(r.to_string().contains("sqli"));
        let raws: Vec<&[u8]> = samples.iter().map(|s| s.raw).collect();
        let t = throughput(&e, &raws, 2);
        assert_eq!((t.requests, t.banned), (6, 2));
        assert!(t.per_second() > 0.0);
    }
}
