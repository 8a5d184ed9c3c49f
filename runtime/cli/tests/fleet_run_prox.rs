//! A FedProx round in `fieldtune run` end to end, against a real flwr 1.42.0 SuperLink on
//! loopback and the ServerApp of scripts/fleet/app with `strategy = "fedprox"`: the same
//! node takes one round with `proximal-mu` 0 and one with a large mu, each from the server's
//! initial arrays. The large mu must keep the replied arrays measurably closer to the server's
//! (which fails if the proximal term never reaches the train step), and its reply must carry
//! the term (`proximal`, finite, > 0); both rounds go through the gate, report its verdict
//! honestly, and serving goes on throughout.

mod common;

use std::path::Path;

use common::field_node::{assert_served_through_rounds, flwr_run, is, node_active, Run};
use common::superlink::SuperLink;
use serde_json::{Map, Value};

/// Local steps of each fleet round.
const STEPS: usize = 10;
/// The large mu: with AdamW at lr 1e-3 the term's gradient `mu * (w - w_global)` outweighs
/// the loss's after a few steps.
const MU: f64 = 10.0;

/// What the ServerApp saw of this node's reply in a one-round run.
struct Replied {
    /// `||w - w_global||` over the arrays sent.
    distance: f64,
    metrics: Map<String, Value>,
}

/// One FedProx round of the ServerApp over this node with `mu`.
fn fedprox_round(link: &SuperLink, dir: &Path, mu: f64) -> Replied {
    let out = flwr_run(
        link,
        dir,
        &format!("num-server-rounds=1 min-nodes=1 strategy='fedprox' proximal-mu={mu:?}"),
    );
    let fail = || format!("mu {mu}: ServerApp output:\n{out}\n{}", link.log_text());
    assert!(
        out.contains("fleet: rounds 1, clients 1, accuracy"),
        "{}",
        fail()
    );
    let distance = out
        .lines()
        .find_map(|l| l.strip_prefix("round 1: ||w - w_global|| per client "))
        .and_then(|l| l.split("; mean ").nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no distance line: {}", fail()));
    let metrics = out
        .lines()
        .find(|l| l.starts_with("round 1: node ") && l.contains(" metrics {"))
        .and_then(|l| l.split_once(" metrics "))
        .and_then(|(_, j)| serde_json::from_str::<Map<String, Value>>(j).ok())
        .unwrap_or_else(|| panic!("no metrics line: {}", fail()));
    Replied { distance, metrics }
}

fn metric(r: &Replied, key: &str) -> f64 {
    r.metrics
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("reply metrics lack '{key}': {:?}", r.metrics))
}

#[test]
fn a_fedprox_round_stays_closer_to_the_server_arrays_and_reports_its_proximal_term() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let link = SuperLink::start(d, None, &[]);
    let run = Run::start(d, link.port, STEPS);
    run.wait("active fleet node", 60, 1, node_active);
    run.wait("stats", 30, 3, is("stats"));

    // The FedProx round first: the gate judges it against the shipped model (the next round
    // is judged against whatever is live then). Both start from the server's initial arrays.
    let prox = fedprox_round(&link, d, MU);
    let free = fedprox_round(&link, d, 0.0);
    eprintln!(
        "||w - w_global|| after {STEPS} steps: mu 0 {:.4}, mu {MU} {:.4} (ratio {:.3}); proximal {:?}",
        free.distance,
        prox.distance,
        prox.distance / free.distance,
        prox.metrics.get("proximal")
    );

    // Both rounds trained; the large mu kept the device measurably closer to the server.
    assert_eq!(metric(&free, "steps") as usize, STEPS);
    assert_eq!(metric(&prox, "steps") as usize, STEPS);
    assert!(free.distance > 0.0 && prox.distance > 0.0);
    assert!(
        prox.distance < 0.7 * free.distance,
        "mu {MU} left ||w - w_global|| at {:.4}, mu 0 at {:.4}: the proximal term did not pull",
        prox.distance,
        free.distance
    );
    // The term is in the reply's loss terms only when it is compiled in.
    assert!(free.metrics.get("proximal").is_none(), "{:?}", free.metrics);
    let p = metric(&prox, "proximal");
    assert!(p.is_finite() && p > 0.0, "proximal {p}");

    // Each reply reports the gate's verdict and the commit as the device's events record them.
    let started = run.kinds("round_started");
    let ended = run.kinds("round_ended");
    let msgs = run.kinds("fleet_message");
    assert_eq!((started.len(), ended.len(), msgs.len()), (2, 2, 2));
    eprintln!(
        "rounds (outcome, seconds): {:?}",
        msgs.iter()
            .zip(&ended)
            .map(|(m, e)| (m.str("outcome").unwrap_or("").to_string(), e.f64("seconds")))
            .collect::<Vec<_>>()
    );
    for (i, r) in [&prox, &free].into_iter().enumerate() {
        assert_eq!(started[i].str("reason"), Some("fleet"));
        assert_eq!(msgs[i].str("kind"), Some("train"));
        assert_eq!(msgs[i].u64("round"), started[i].u64("round"));
        let pass = ended[i].fields["gate"]["pass"].as_bool().unwrap();
        assert_eq!(metric(r, "gate-passed") == 1.0, pass, "{:?}", ended[i]);
        let committed = msgs[i].str("outcome") == Some("committed");
        assert_eq!(metric(r, "committed") == 1.0, committed, "{:?}", msgs[i]);
        assert!(committed || msgs[i].str("outcome") == Some("rolled_back"));
    }
    // Judged against the shipped model, the FedProx round passes the gate and is swapped in.
    assert_eq!(msgs[0].str("outcome"), Some("committed"), "{:?}", ended[0]);
    let committed = run.kinds("committed");
    assert_eq!(committed[0].u64("round"), started[0].u64("round"));
    assert_eq!(committed[0].u64("version"), Some(1));
    // The reply's term is the round's own (the mean over its steps).
    let logged = ended[0].fields["metrics"]["proximal"].as_f64().unwrap();
    assert!((logged - p).abs() <= 1e-6 * p, "event {logged}, reply {p}");

    // Frames were served while the FedProx round trained and was judged.
    let (t0, t1) = (started[0].t_ms, ended[0].t_ms);
    let at_start = started[0].u64("frame").unwrap();
    assert!(
        run.kinds("stats")
            .iter()
            .any(|e| e.t_ms > t0 && e.t_ms <= t1 && e.u64("frames").unwrap() > at_start),
        "no frame served during the FedProx round ({t0}..{t1} ms)"
    );
    let s = run.stop();
    assert_eq!(s["fleet_rounds"], 2);
    assert_eq!(s["inference_errors"], 0, "{s}");
    assert_served_through_rounds(d, &s);
}
