//! Evaluates the default engine on a JSONL corpus and measures throughput.
//!
//! `cargo run -p tollgate-detect --release --example eval -- /work/shared/corpus/dev.jsonl [--missed] [--fp]`

use std::time::Instant;

use serde::Deserialize;
use tollgate_detect::eval::{Sample, evaluate, throughput};
use tollgate_detect::{DetectConfig, Engine, Parsed, parse_request};

#[derive(Deserialize)]
struct Line {
    id: String,
    source: String,
    label: String,
    category: String,
    raw: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: eval <corpus.jsonl> [--missed] [--fp]");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(path)?;
    let lines: Vec<Line> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let engine = Engine::new(DetectConfig::default());
    let samples = lines.iter().map(|l| Sample {
        id: &l.id,
        source: &l.source,
        label: &l.label,
        category: &l.category,
        raw: l.raw.as_bytes(),
    });
    let report = evaluate(&engine, samples);
    println!("{report}");
    let show = |ids: &[String], what: &str| {
        for id in ids {
            if let Some(l) = lines.iter().find(|l| &l.id == id) {
                let v = match parse_request(l.raw.as_bytes()) {
                    Ok(Parsed::Complete { msg, .. }) => format!(
                        "{:?}",
                        engine
                            .inspect_request(&msg)
                            .iter()
                            .map(|v| (v.rule, v.score, v.evidence.clone()))
                            .collect::<Vec<_>>()
                    ),
                    other => format!("{other:?}"),
                };
                let first = l.raw.lines().next().unwrap_or("");
                println!(
                    "{what} {} [{}] {} {v}",
                    l.id,
                    l.category,
                    first.chars().take(200).collect::<String>()
                );
            }
        }
    };
    if args.iter().any(|a| a == "--missed") {
        show(&report.missed_ids, "MISSED");
    }
    if args.iter().any(|a| a == "--rules") {
        // Which rules fire on benign samples (alerts included).
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for l in lines.iter().filter(|l| l.label == "benign") {
            if let Ok(Parsed::Complete { msg, .. }) = parse_request(l.raw.as_bytes()) {
                for v in engine.inspect_request(&msg) {
                    *counts.entry(v.rule).or_default() += 1;
                }
            }
        }
        println!("rules firing on benign samples: {counts:?}");
    }
    if args.iter().any(|a| a == "--fp") {
        show(&report.false_positive_ids, "FP");
        show(&report.benign_alert_ids, "ALERT");
    }
    // Throughput: parse + inspect + verdict over the whole corpus, several rounds.
    let raws: Vec<&[u8]> = lines.iter().map(|l| l.raw.as_bytes()).collect();
    let t = throughput(&engine, &raws, 5);
    let pstart = Instant::now();
    let mut parsed = 0usize;
    for l in &lines {
        if let Ok(Parsed::Complete { msg, .. }) = parse_request(l.raw.as_bytes()) {
            parsed += msg.headers.len();
        }
    }
    println!(
        "parse only: {:.0} req/s ({parsed} headers)",
        lines.len() as f64 / pstart.elapsed().as_secs_f64()
    );
    println!(
        "throughput: {} requests in {:.3}s = {:.0} req/s on one core ({} bans)",
        t.requests,
        t.seconds,
        t.per_second(),
        t.banned
    );
    Ok(())
}
