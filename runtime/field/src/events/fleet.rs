//! The fleet's events (`[fleet]`, docs/FLEET.md): the node's link to its SuperLink and each
//! message it answered.

use serde::{Deserialize, Serialize};

/// `fleet_node`: the SuperNode's link changed state: `active` (registered and activated,
/// pulling messages), `retrying` (the SuperLink was unreachable, restarted or refused the
/// node: it registers again after `retry_s`), `stopped` (the run ended).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetNode {
    pub state: String,
    pub superlink: String,
    /// Why the node left `active` (`retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds before the next attempt (`retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_s: Option<f64>,
}

/// `fleet_message`: a message the node answered: its `kind` (`train`, `evaluate`), the
/// server's round, and the `outcome`: `committed` (a train round passed the gate and went
/// live), `rolled_back` (the gate refused it; the reply still carries the trained arrays),
/// `evaluated`, or `error` (an error reply, with `error`: arrays for another model, too few
/// replay frames, a failed round).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetMessage {
    pub kind: String,
    /// The server's round (`server-round` of the message's config; 0 when absent).
    pub server_round: u64,
    /// This device's round number, for a `train` message that ran one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Arrays in the reply.
    pub arrays: usize,
}
