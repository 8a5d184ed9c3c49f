//! [`LinkConfig`]: how a device reaches its SuperLink and what its replies send. The same keys
//! serve `fieldtune fleet --config` (flattened into that file) and the `[fleet]` section of
//! `fieldtune run`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{FleetError, Result};
use crate::http::{FleetHttp, TlsConfig};
use crate::keys::NodeKey;

/// Which arrays a `train` reply carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendSet {
    /// Every float array of the model.
    #[default]
    All,
    /// Every float array but BatchNorm running statistics, which stay on the device (FedBN).
    Fedbn,
    /// Only the parameters the recipe trains (`--train bn`, `head`, `last:K`): kilobyte
    /// payloads.
    Trained,
}

impl SendSet {
    pub fn as_str(self) -> &'static str {
        match self {
            SendSet::All => "all",
            SendSet::Fedbn => "fedbn",
            SendSet::Trained => "trained",
        }
    }
}

/// The SuperLink and this node's side of the link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// The SuperLink's Fleet API: `host:port` (HTTPS) or a URL. Empty: no fleet.
    pub superlink: String,
    /// Plain HTTP: allowed only to a loopback SuperLink.
    pub insecure: bool,
    /// PEM file of the CA that signed the SuperLink's certificate (default: web PKI roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The name the SuperLink's certificate carries, when it is not the host of `superlink`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The node's P-384 key (PKCS#8 PEM), created with mode 0600 when missing; its public key
    /// is written beside it (`<key>.pub`).
    pub key: PathBuf,
    /// Heartbeat period announced to the SuperLink (seconds).
    pub heartbeat_s: f64,
    /// What a `train` reply sends.
    pub send: SendSet,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            superlink: String::new(),
            insecure: false,
            ca: None,
            server_name: None,
            key: PathBuf::from("fleet-node.key"),
            heartbeat_s: 30.0,
            send: SendSet::All,
        }
    }
}

/// Bounds of `heartbeat_s` (seconds): what a flwr 1.42.0 SuperLink accepts.
pub const HEARTBEAT_S: (f64, f64) = (10.0, 1800.0);

impl LinkConfig {
    /// The keys of the section, for files that flatten it beside their own keys.
    pub const KEYS: &'static [&'static str] = &[
        "superlink",
        "insecure",
        "ca",
        "server_name",
        "key",
        "heartbeat_s",
        "send",
    ];

    /// Whether a SuperLink is configured.
    pub fn enabled(&self) -> bool {
        !self.superlink.trim().is_empty()
    }

    /// What is wrong with the settings, as (key, reason): an empty key file name, a
    /// heartbeat out of bounds, plain HTTP to a host that is not loopback.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        if !self.enabled() {
            return Err((
                "superlink",
                "empty: the SuperLink's host:port is needed".into(),
            ));
        }
        if self.key.as_os_str().is_empty() {
            return Err(("key", "empty: the node key's file is needed".into()));
        }
        let (lo, hi) = HEARTBEAT_S;
        if !(lo..=hi).contains(&self.heartbeat_s) {
            return Err((
                "heartbeat_s",
                format!("{} is outside {lo}..={hi} seconds", self.heartbeat_s),
            ));
        }
        // The address and TLS rules as the client applies them (no connection is made).
        FleetHttp::check_address(&self.superlink, &self.tls())
            .map(|_| ())
            .map_err(|e| ("superlink", e.to_string()))
    }

    pub fn tls(&self) -> TlsConfig {
        TlsConfig {
            ca: self.ca.clone(),
            server_name: self.server_name.clone(),
            insecure: self.insecure,
        }
    }

    /// Loads (or creates) the node key and builds the client.
    pub fn connect(&self) -> Result<FleetHttp> {
        if !self.enabled() {
            return Err(FleetError::Config("no SuperLink configured".into()));
        }
        let key = NodeKey::load_or_create(&self.key)?;
        FleetHttp::new(&self.superlink, &self.tls(), key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_key() {
        let ok = LinkConfig {
            superlink: "127.0.0.1:9092".into(),
            insecure: true,
            ..LinkConfig::default()
        };
        assert_eq!(ok.check(), Ok(()));
        let far = LinkConfig {
            superlink: "10.1.2.3:9092".into(),
            ..ok.clone()
        };
        let (k, why) = far.check().unwrap_err();
        assert_eq!(k, "superlink");
        assert!(why.contains("loopback"), "{why}");
        let slow = LinkConfig {
            heartbeat_s: 0.0,
            ..ok.clone()
        };
        assert_eq!(slow.check().unwrap_err().0, "heartbeat_s");
        assert_eq!(LinkConfig::default().check().unwrap_err().0, "superlink");
        let t: LinkConfig = toml::from_str("superlink = \"x:1\"\nsend = \"trained\"").unwrap();
        assert_eq!(t.send, SendSet::Trained);
        assert!(toml::from_str::<LinkConfig>("send = \"some\"").is_err());
    }
}
