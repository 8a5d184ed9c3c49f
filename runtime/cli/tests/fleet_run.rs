//! `fieldtune run` with `[fleet]` against a real flwr 1.42.0 SuperLink on loopback: the field
//! runtime joins as a SuperNode, a FedAvg round of the ServerApp in scripts/fleet/app becomes
//! a fleet round (the gate decides; a pass is checkpointed as kind `fleet` and swapped in)
//! while every frame keeps being served; arrays for another model get error replies and
//! serving goes on; after a SuperLink restart the node registers again and takes the next
//! round.

mod common;

use std::path::Path;

use common::field_node::{assert_served_through_rounds, flwr_run, is, node_active, Run};
use common::superlink::SuperLink;

/// One FedAvg round over this node (min-nodes 1), aggregate checked against the weighted mean.
fn fedavg_round(link: &SuperLink, dir: &Path) -> String {
    let out = flwr_run(
        link,
        dir,
        "num-server-rounds=1 min-nodes=1 checks=true mode='rounds'",
    );
    assert!(
        out.contains("fleet: rounds 1, clients 1, accuracy"),
        "{out}\n{}",
        link.log_text()
    );
    assert!(
        out.contains("fleet: FedAvg == weighted mean of the clients' arrays"),
        "{out}"
    );
    out
}

#[test]
fn a_fedavg_round_is_gated_checkpointed_and_swapped_while_frames_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let link = SuperLink::start(d, None, &[]);
    let run = Run::start(d, link.port, 5);
    run.wait("active fleet node", 60, 1, node_active);
    // Replay frames to train on.
    run.wait("stats", 30, 3, is("stats"));
    let out = fedavg_round(&link, d);

    let msgs = run.kinds("fleet_message");
    assert_eq!(msgs.len(), 1, "{out}");
    let m = &msgs[0];
    assert_eq!(m.str("kind"), Some("train"));
    assert_eq!(m.u64("server_round"), Some(1));
    let started = run.kinds("round_started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].str("reason"), Some("fleet"));
    let round = started[0].u64("round").unwrap();
    assert_eq!(m.u64("round"), Some(round));
    // The gate judged the fleet's weights; this round on this stream passes it.
    let ended = run.kinds("round_ended");
    assert_eq!(ended.len(), 1);
    assert_eq!(m.str("outcome"), Some("committed"), "{:?}", ended[0]);
    let committed = run.kinds("committed");
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0].u64("round"), Some(round));
    let meta = fieldtune_field::store::Store::inspect(&run.state)
        .read(&run.state.join("last-good.safetensors"))
        .expect("last-good checkpoint")
        .meta;
    assert_eq!(meta.kind, "fleet");
    assert_eq!(meta.version, 1);
    // The reply carried the model's arrays (the ServerApp's check passed) and num-examples.
    assert!(m.u64("arrays").unwrap() > 0);

    // Frames kept being served through the round, and after it on the new version.
    let frames_at_commit = run.kinds("stats").last().unwrap().u64("frames").unwrap();
    run.wait("stats after the commit", 30, 1, |e| {
        e.event == "stats"
            && e.u64("version") == Some(1)
            && e.u64("frames").unwrap_or(0) > frames_at_commit
    });
    let s = run.stop();
    assert_eq!(s["fleet_rounds"], 1);
    assert_eq!(s["fleet_passed"], 1);
    assert_eq!(s["capture_dropped"], 0, "{s}");
    assert_eq!(s["inference_errors"], 0, "{s}");
    assert_served_through_rounds(d, &s);
}

#[test]
fn wrong_arrays_get_error_replies_and_after_a_superlink_restart_the_node_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let link = SuperLink::start(d, None, &[]);
    let port = link.port;
    let run = Run::start(d, port, 5);
    run.wait("active fleet node", 60, 1, node_active);
    run.wait("stats", 30, 3, is("stats"));

    // Arrays of another shape, an array the model does not have: error replies naming them;
    // then an evaluate answered from the live model.
    let out = flwr_run(&link, d, "mode='wrong-arrays'");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("wrong-input:")).collect();
    assert_eq!(lines.len(), 3, "{out}\n{}", link.log_text());
    assert!(lines[0].contains("has shape [3, 5]"), "{}", lines[0]);
    assert!(
        lines[1].contains("array 'head.extra.weight' is not a parameter of this model"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("anchor-accuracy"), "{}", lines[2]);
    let outcomes: Vec<String> = run
        .kinds("fleet_message")
        .iter()
        .map(|e| e.str("outcome").unwrap_or("").to_string())
        .collect();
    assert_eq!(outcomes, ["error", "error", "evaluated"]);
    assert!(run.kinds("round_started").is_empty());
    let frames_before = run.kinds("stats").last().unwrap().u64("frames").unwrap();

    // The SuperLink restarts with empty state on the same port: the node is unknown there,
    // registers again and takes the next round.
    drop(link);
    let link = SuperLink::start_on(port, d, None, &[]);
    run.wait("second activation", 60, 2, node_active);
    assert!(
        run.kinds("fleet_node")
            .iter()
            .any(|e| e.str("state") == Some("retrying")),
        "{:?}",
        run.kinds("fleet_node")
    );
    fedavg_round(&link, d);
    let msgs = run.kinds("fleet_message");
    assert_eq!(msgs.len(), 4);
    let last = &msgs[3];
    assert_eq!(last.str("kind"), Some("train"));
    assert!(
        matches!(last.str("outcome"), Some("committed" | "rolled_back")),
        "{last:?}"
    );
    let s = run.stop();
    assert_eq!(s["fleet_rounds"], 1);
    assert!(s["frames"].as_u64().unwrap() > frames_before, "{s}");
    assert_eq!(s["inference_errors"], 0, "{s}");
}
