//! The event log stays byte-compatible: `fixtures/events-v1.jsonl` holds lines as the runtime
//! wrote them before events were typed (captured from runs of this crate's tests, every kind
//! and every shape of `round_ended` and `rolled_back`). Each line read as a [`FieldEvent`] and
//! written again gives the same bytes, and `fieldtune report` still draws the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fieldtune_field::events::{read_events, FieldEvent, RoundEnded};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events-v1.jsonl")
}

/// The number tokens of a JSON line, in order (strings skipped).
fn number_tokens(line: &str) -> Vec<&str> {
    let (b, mut i, mut out) = (line.as_bytes(), 0, Vec::new());
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push(&line[start..i]);
            }
            _ => i += 1,
        }
    }
    out
}

/// Puts the exact value of each float token into `v`: serde_json's default parser may be
/// one unit in the last place off, Rust's `str::parse` is not. The lines were written from
/// sorted maps, so `v`'s iteration order is the text's order.
fn exact_floats<'a>(v: &mut Value, tokens: &mut impl Iterator<Item = &'a str>) {
    match v {
        Value::Number(n) => {
            let tok = tokens.next().expect("a token per number");
            if n.is_f64() {
                let x: f64 = tok.parse().expect("a float");
                *n = serde_json::Number::from_f64(x).expect("finite");
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| exact_floats(x, tokens)),
        Value::Object(m) => m.values_mut().for_each(|x| exact_floats(x, tokens)),
        _ => {}
    }
}

/// A line as a typed event and its time.
fn parse(line: &str) -> (u64, FieldEvent) {
    let mut v = serde_json::from_str::<Value>(line).expect("JSON");
    let mut tokens = number_tokens(line).into_iter();
    exact_floats(&mut v, &mut tokens);
    assert!(tokens.next().is_none(), "{line}");
    let Value::Object(mut m) = v else {
        panic!("not an object: {line}");
    };
    let t_ms = m.remove("t_ms").and_then(|t| t.as_u64()).expect("t_ms");
    let event = serde_json::from_value(Value::Object(m))
        .unwrap_or_else(|e| panic!("not a FieldEvent ({e}): {line}"));
    (t_ms, event)
}

#[test]
fn old_lines_are_written_again_byte_for_byte() {
    let text = std::fs::read_to_string(fixture()).expect("fixture");
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut shapes = BTreeMap::<&str, usize>::new();
    for line in text.lines() {
        let (t_ms, event) = parse(line);
        assert_eq!(event.to_line(t_ms), format!("{line}\n"));
        *kinds.entry(event.kind().to_string()).or_default() += 1;
        if let FieldEvent::RoundEnded(r) = &event {
            let shape = match r {
                RoundEnded::Gated(_) => "gated",
                RoundEnded::Stopped(_) => "stopped",
                RoundEnded::Failed(_) => "failed",
            };
            *shapes.entry(shape).or_default() += 1;
        }
    }
    let all = [
        "checkpoint_quarantined",
        "committed",
        "paused",
        "reset_to_source",
        "resumed",
        "rolled_back",
        "round_ended",
        "round_started",
        "started",
        "stats",
        "stopped",
        "trigger",
    ];
    assert_eq!(kinds.keys().collect::<Vec<_>>(), all, "{kinds:?}");
    assert_eq!(shapes.len(), 3, "{shapes:?}");
}

#[test]
fn the_report_draws_an_old_log() {
    let (events, skipped) = read_events(&fixture()).expect("event log");
    assert_eq!(skipped, 0);
    assert!(events.iter().all(|e| e.typed().is_some()));
    let count = |kind: &str| events.iter().filter(|e| e.event == kind).count();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report.png");
    let s = fieldtune_field::report::render(&fixture(), &out, None, 800, 700).expect("report");
    assert_eq!(s.events, events.len());
    assert_eq!(s.stats, count("stats"));
    assert_eq!(s.starts, count("started"));
    assert_eq!(s.rounds, count("round_ended"));
    assert_eq!(s.commits, count("committed"));
    assert_eq!(s.rollbacks, count("rolled_back"));
    assert_eq!(s.resets, count("reset_to_source"));
    let first = events
        .iter()
        .find_map(|e| (e.event == "stats").then(|| e.f64("accuracy")).flatten());
    assert_eq!(s.first_accuracy, first);
    assert!(s.first_accuracy.is_some(), "the fixture has labeled frames");
    let png = image::open(&out).expect("a PNG");
    assert_eq!((png.width(), png.height()), (800, 700));
}
