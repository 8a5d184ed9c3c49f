//! The SuperNode life cycle: register and activate the node key, heartbeats in the
//! background, then pull messages; for each, pull its objects (bounded), confirm receipt,
//! let the [`Handler`] answer, push the reply and its objects. Deactivates on exit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fieldtune_tensor::Tensor;

use crate::error::{obj, FleetError, Result};
use crate::http::FleetHttp;
use crate::objects::{decode_message, Builder, ConfigValue};
use crate::proto;

/// Limits and pacing of the node loop.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Heartbeat period announced to the SuperLink and kept (seconds).
    pub heartbeat_s: f64,
    /// Wait between two pulls that found nothing (seconds).
    pub poll_s: f64,
    /// Largest single object accepted (bytes).
    pub max_object_bytes: u64,
    /// Most bytes one message may pull in total.
    pub max_message_bytes: u64,
    /// Stop after this many handled messages (None: until stopped).
    pub max_messages: Option<usize>,
    /// Stop when no message came for this long (seconds; None: never).
    pub idle_exit_s: Option<f64>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            heartbeat_s: 30.0,
            poll_s: 1.0,
            max_object_bytes: 64 << 20,
            max_message_bytes: 256 << 20,
            max_messages: None,
            idle_exit_s: None,
        }
    }
}

/// What the server asked: the message type (`train`, `evaluate`, ...), arrays, config.
#[derive(Clone, Debug)]
pub struct Request {
    pub kind: String,
    pub arrays: Vec<(String, Tensor)>,
    pub config: Vec<(String, ConfigValue)>,
}

/// The answer: arrays (empty for evaluate) and metrics.
#[derive(Debug, Default)]
pub struct Reply {
    pub arrays: Vec<(String, Tensor)>,
    pub metrics: Vec<(String, f64)>,
}

/// What runs a request on the device. An `Err` becomes an error reply with that text.
pub trait Handler {
    fn handle(&mut self, req: &Request) -> std::result::Result<Reply, String>;

    /// The node was registered and activated as `node_id` (again after a SuperLink restart).
    fn active(&mut self, _node_id: u64) {}
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs the node until `stop` is set, `max_messages` were handled or it was idle for
/// `idle_exit_s`. Returns the number of messages handled.
pub fn run_node(
    http: &FleetHttp,
    cfg: &NodeConfig,
    handler: &mut dyn Handler,
    stop: &AtomicBool,
) -> Result<usize> {
    let pk = http.key.public_pem.clone();
    // With SuperNode authentication on, the SuperLink refuses registration over the Fleet
    // API (Flower error 2001): the key must have been registered with `flwr supernode register`.
    let mut registration_closed = false;
    if let Err(e) = http.call::<_, proto::RegisterNodeFleetResponse>(
        "register-node",
        &proto::RegisterNodeFleetRequest {
            public_key: pk.clone(),
        },
    ) {
        match e {
            // A key registered earlier (the node restarted): activation decides.
            FleetError::Status {
                status, ref body, ..
            } if status != 401 => {
                registration_closed = body.starts_with("Flower error 2001:");
                tracing::info!("register-node: {e}; activating the known key")
            }
            e => return Err(e),
        }
    }
    let act: proto::ActivateNodeResponse = http
        .call(
            "activate-node",
            &proto::ActivateNodeRequest {
                public_key: pk,
                heartbeat_interval: cfg.heartbeat_s,
            },
        )
        .map_err(|e| match e {
            FleetError::Status { url, status, .. } if status != 401 && registration_closed => {
                FleetError::NotRegistered {
                    url,
                    public_key: http.key.public_path.clone(),
                }
            }
            e => e,
        })?;
    let node = proto::Node {
        node_id: act.node_id,
    };
    tracing::info!(
        node_id = node.node_id,
        superlink = http.base(),
        "node active"
    );
    handler.active(node.node_id);
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| heartbeats(http, node, cfg.heartbeat_s, &done, stop));
        let r = serve(http, node, cfg, handler, stop);
        done.store(true, Ordering::Relaxed);
        r
    });
    let _ = http.call::<_, proto::DeactivateNodeResponse>(
        "deactivate-node",
        &proto::DeactivateNodeRequest {
            node_id: node.node_id,
        },
    );
    let _ = http.call::<_, proto::UnregisterNodeFleetResponse>(
        "unregister-node",
        &proto::UnregisterNodeFleetRequest {
            node_id: node.node_id,
        },
    );
    result
}

fn heartbeats(
    http: &FleetHttp,
    node: proto::Node,
    every: f64,
    done: &AtomicBool,
    stop: &AtomicBool,
) {
    let mut last = Instant::now() - Duration::from_secs_f64(every);
    while !done.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
        if last.elapsed().as_secs_f64() >= every / 2.0 {
            last = Instant::now();
            let r = http.call::<_, proto::SendNodeHeartbeatResponse>(
                "send-node-heartbeat",
                &proto::SendNodeHeartbeatRequest {
                    node: Some(node),
                    heartbeat_interval: every,
                },
            );
            match r {
                Ok(r) if !r.success => {
                    tracing::warn!("heartbeat: the SuperLink does not know this node")
                }
                Err(e) => tracing::warn!("heartbeat: {e}"),
                Ok(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn serve(
    http: &FleetHttp,
    node: proto::Node,
    cfg: &NodeConfig,
    handler: &mut dyn Handler,
    stop: &AtomicBool,
) -> Result<usize> {
    let mut handled = 0;
    let mut idle_since = Instant::now();
    let mut backoff = cfg.poll_s;
    while !stop.load(Ordering::Relaxed) {
        if cfg.max_messages.is_some_and(|m| handled >= m) {
            break;
        }
        if cfg
            .idle_exit_s
            .is_some_and(|s| idle_since.elapsed().as_secs_f64() > s)
        {
            tracing::info!(
                "no message for {:.0} s: leaving",
                idle_since.elapsed().as_secs_f64()
            );
            break;
        }
        let pulled: proto::PullMessagesResponse = match http.call(
            "pull-messages",
            &proto::PullMessagesRequest {
                node: Some(node),
                message_ids: vec![],
            },
        ) {
            Ok(p) => {
                backoff = cfg.poll_s;
                p
            }
            // A SuperLink that is down or restarting: back off, keep the node.
            Err(FleetError::Http { reason, .. }) => {
                tracing::warn!("pull-messages: {reason}; retrying in {backoff:.1} s");
                std::thread::sleep(Duration::from_secs_f64(backoff));
                backoff = (backoff * 2.0).min(30.0);
                continue;
            }
            Err(e) => return Err(e),
        };
        let (Some(msg), Some(tree)) = (
            pulled.messages_list.first(),
            pulled.message_object_trees.first(),
        ) else {
            std::thread::sleep(Duration::from_secs_f64(cfg.poll_s));
            continue;
        };
        match handle_one(http, node, cfg, handler, msg, tree) {
            // A refused key or another flwr version will not get better: stop.
            Err(e @ (FleetError::Version { .. } | FleetError::Status { status: 401, .. })) => {
                return Err(e)
            }
            // One message that failed does not stop the node.
            Err(e) => tracing::error!("message {}: {e}", tree.object_id),
            Ok(()) => {}
        }
        handled += 1;
        idle_since = Instant::now();
    }
    Ok(handled)
}

/// Pulls every object of `tree` (ids checked, sizes bounded).
fn pull_tree(
    http: &FleetHttp,
    node: proto::Node,
    run_id: u64,
    tree: &proto::ObjectTree,
    cfg: &NodeConfig,
) -> Result<HashMap<String, Vec<u8>>> {
    let mut ids = Vec::new();
    let mut todo = vec![tree];
    while let Some(t) = todo.pop() {
        ids.push(t.object_id.clone());
        todo.extend(t.children.iter());
    }
    let mut store = HashMap::new();
    let mut total = 0u64;
    for id in ids {
        if store.contains_key(&id) {
            continue;
        }
        let mut tries = 0;
        let content = loop {
            let r: proto::PullObjectResponse = http.call(
                "pull-object",
                &proto::PullObjectRequest {
                    node: Some(node),
                    run_id,
                    object_id: id.clone(),
                },
            )?;
            if !r.object_found {
                return Err(obj(&id, "the SuperLink does not have it"));
            }
            if r.object_available {
                break r.object_content;
            }
            tries += 1;
            if tries > 600 {
                return Err(obj(&id, "still not available after 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let n = content.len() as u64;
        if n > cfg.max_object_bytes {
            return Err(obj(
                &id,
                format!("{n} bytes, over the {} byte limit", cfg.max_object_bytes),
            ));
        }
        total += n;
        if total > cfg.max_message_bytes {
            return Err(obj(
                &id,
                format!(
                    "the message passes the {} byte limit",
                    cfg.max_message_bytes
                ),
            ));
        }
        store.insert(id, content);
    }
    Ok(store)
}

fn handle_one(
    http: &FleetHttp,
    node: proto::Node,
    cfg: &NodeConfig,
    handler: &mut dyn Handler,
    msg: &proto::Message,
    tree: &proto::ObjectTree,
) -> Result<()> {
    let t0 = Instant::now();
    let meta = msg.metadata.clone().unwrap_or_default();
    let run_id = meta.run_id;
    let decoded = pull_tree(http, node, run_id, tree, cfg)
        .and_then(|store| decode_message(&tree.object_id, &store));
    let _ = http.call::<_, proto::ConfirmMessageReceivedResponse>(
        "confirm-message-received",
        &proto::ConfirmMessageReceivedRequest {
            node: Some(node),
            run_id,
            message_object_id: tree.object_id.clone(),
        },
    )?;
    let answer = match decoded {
        Err(e) => Err(format!("fieldtune could not read the message: {e}")),
        Ok((_, records)) => {
            let req = Request {
                kind: meta.message_type.clone(),
                arrays: records.arrays.into_values().next().unwrap_or_default(),
                config: records.configs.into_values().next().unwrap_or_default(),
            };
            tracing::info!(kind = %req.kind, arrays = req.arrays.len(), "message");
            handler.handle(&req)
        }
    };
    let mut b = Builder::default();
    let created_at = now_s();
    let reply_meta = proto::Metadata {
        run_id,
        message_id: String::new(),
        src_node_id: meta.dst_node_id,
        dst_node_id: meta.src_node_id,
        reply_to_message_id: meta.message_id.clone(),
        group_id: meta.group_id.clone(),
        ttl: (meta.created_at + meta.ttl - created_at).max(1.0),
        message_type: meta.message_type.clone(),
        created_at,
        src_task_id: meta.dst_task_id,
        dst_task_id: meta.src_task_id,
    };
    let mut error = None;
    let root = match answer {
        Ok(reply) => {
            let mut recs = Vec::new();
            if !reply.arrays.is_empty() {
                recs.push(("arrays".to_string(), b.array_record(&reply.arrays)));
            }
            recs.push(("metrics".to_string(), b.metric_record(&reply.metrics)));
            let content = b.record_dict(recs);
            b.message(reply_meta.clone(), Some(content), None)
        }
        Err(reason) => {
            tracing::warn!("error reply: {reason}");
            // Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION.
            let e = proto::Error { code: 2, reason };
            error = Some(e.clone());
            b.message(reply_meta.clone(), None, Some(e))
        }
    };
    let wire = proto::Message {
        metadata: Some(proto::Metadata {
            message_id: root.object_id.clone(),
            ..reply_meta
        }),
        // As flwr's SuperNode sends it: the content travels as objects, the message itself
        // carries an empty RecordDict (or the error).
        content: error.is_none().then(proto::RecordDict::default),
        error,
    };
    let pushed: proto::PushMessagesResponse = http.call(
        "push-messages",
        &proto::PushMessagesRequest {
            node: Some(node),
            messages_list: vec![wire],
            message_object_trees: vec![root],
            clientapp_runtime_list: vec![t0.elapsed().as_secs_f64()],
        },
    )?;
    for id in &pushed.objects_to_push {
        let content = b.objects.remove(id).ok_or_else(|| {
            obj(
                id,
                "the SuperLink asked for an object this reply does not hold",
            )
        })?;
        let r: proto::PushObjectResponse = http.call(
            "push-object",
            &proto::PushObjectRequest {
                node: Some(node),
                run_id,
                object_id: id.clone(),
                object_content: content,
                session_id: pushed.session_id.clone(),
            },
        )?;
        if !r.stored {
            return Err(obj(id, "the SuperLink did not store it"));
        }
    }
    tracing::info!(
        seconds = t0.elapsed().as_secs_f64(),
        objects = pushed.objects_to_push.len(),
        "replied"
    );
    Ok(())
}
