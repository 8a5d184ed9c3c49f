//! The fleet node thread (`[fleet]`, docs/FLEET.md): `fieldtune_fleet`'s node loop on its own
//! thread, so that the SuperLink's pace never reaches inference. Each message goes to the round
//! thread as a [`FleetJob`] and the node waits for its answer; the round thread runs a `train`
//! message as a fleet round (supervisor/fleet.rs) between its other rounds. A SuperLink that
//! is down, restarted (it forgets the node: HTTP 401) or refuses the node ends one node loop;
//! the thread logs a `fleet_node` event and registers again after a backoff, until the run
//! stops.

use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fieldtune_fleet::{FleetHttp, Handler, NodeConfig, Reply, Request};

use super::spawn;
use super::state::RunState;
use crate::config::FleetConfig;
use crate::error::{FieldError, Result};
use crate::events::{EventLog, FieldEvent, FleetNode};

/// A message for the round thread and where its answer goes (an `Err` becomes an error reply).
pub(crate) struct FleetJob {
    pub req: Request,
    pub reply: mpsc::SyncSender<std::result::Result<Reply, String>>,
}

/// Longest wait between two registrations (seconds).
const MAX_BACKOFF_S: f64 = 30.0;

/// Loads (or creates) the node key and makes the client (nothing is connected yet); errors
/// name the config file and `fleet`.
pub(crate) fn connect(cfg: &FleetConfig, config_path: &std::path::Path) -> Result<FleetHttp> {
    cfg.connect().map_err(|e| FieldError::Config {
        path: config_path.into(),
        key: Some("fleet".into()),
        reason: e.to_string(),
    })
}

/// Starts the node thread; the round thread takes the jobs sent to `jobs`.
pub(crate) fn start(
    http: FleetHttp,
    cfg: &FleetConfig,
    jobs: mpsc::Sender<FleetJob>,
    state: Arc<RunState>,
    events: Arc<EventLog>,
) -> Result<JoinHandle<()>> {
    let node_cfg = NodeConfig {
        heartbeat_s: cfg.heartbeat_s,
        poll_s: 0.5,
        ..NodeConfig::default()
    };
    spawn("fleet", move || {
        node_thread(http, node_cfg, jobs, state, events)
    })
}

/// Hands messages to the round thread and waits for the answer (or the run's end).
struct Bridge {
    jobs: mpsc::Sender<FleetJob>,
    state: Arc<RunState>,
    events: Arc<EventLog>,
    superlink: String,
    /// Set when the node became active (the backoff starts over).
    joined: bool,
}

impl Handler for Bridge {
    fn handle(&mut self, req: &Request) -> std::result::Result<Reply, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job = FleetJob {
            req: req.clone(),
            reply: tx,
        };
        if self.jobs.send(job).is_err() {
            return Err("the device's round thread has ended".into());
        }
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(answer) => return answer,
                Err(mpsc::RecvTimeoutError::Timeout) if !self.state.stopped() => {}
                _ => return Err("the device stopped before answering".into()),
            }
        }
    }

    fn active(&mut self, node_id: u64) {
        tracing::info!("fleet: node {node_id} active on {}", self.superlink);
        self.joined = true;
        self.events.emit(FieldEvent::FleetNode(FleetNode {
            state: "active".into(),
            superlink: self.superlink.clone(),
            reason: None,
            retry_s: None,
        }));
    }
}

fn node_thread(
    http: FleetHttp,
    cfg: NodeConfig,
    jobs: mpsc::Sender<FleetJob>,
    state: Arc<RunState>,
    events: Arc<EventLog>,
) {
    let superlink = http.base().to_string();
    let mut bridge = Bridge {
        jobs,
        state: state.clone(),
        events: events.clone(),
        superlink: superlink.clone(),
        joined: false,
    };
    let mut backoff = 1.0f64;
    let mut last_error = String::new();
    while !state.stopped() {
        bridge.joined = false;
        let r = fieldtune_fleet::run_node(&http, &cfg, &mut bridge, &state.stop);
        if state.stopped() {
            break;
        }
        if bridge.joined {
            backoff = 1.0;
        }
        let reason = match r {
            Ok(_) => "the node loop ended".to_string(),
            Err(e) => e.to_string(),
        };
        // One line per new cause; a SuperLink that stays down is not logged every attempt.
        if reason != last_error {
            tracing::warn!("fleet: {reason}; registering again in {backoff:.0} s");
            events.emit(FieldEvent::FleetNode(FleetNode {
                state: "retrying".into(),
                superlink: superlink.clone(),
                reason: Some(reason.clone()),
                retry_s: Some(backoff),
            }));
            last_error = reason;
        }
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < backoff && !state.stopped() {
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2.0).min(MAX_BACKOFF_S);
    }
    events.emit(FieldEvent::FleetNode(FleetNode {
        state: "stopped".into(),
        superlink,
        reason: None,
        retry_s: None,
    }));
}
