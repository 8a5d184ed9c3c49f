//! `fieldtune fleet --config FILE`: this device as a Flower SuperNode (flwr 1.42.0). A
//! `train` message puts the server's arrays into the model (names, shapes, dtypes and
//! finiteness checked), runs K steps of the configured recipe on this device's frames plus
//! the anchors, and replies with the new arrays and metrics; `evaluate` replies with the
//! anchor accuracy. Frames never leave the device; weights do. See docs/FLEET.md.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use clap::Args;
use fieldtune_adapt::{adapt, AdaptConfig, AdaptData, ModelDir};
use fieldtune_engine::Engine;
use fieldtune_fleet::arrays::sends;
use fieldtune_fleet::{
    checked_params, is_bn_stat, ConfigValue, Handler, LinkConfig, NodeConfig, Reply, Request,
    SendSet,
};
use fieldtune_frames::Image8;
use fieldtune_tensor::Tensor;
use serde::Deserialize;

use super::{engine, eval_model, load_labeled, open_model};
use crate::args::{EngineArgs, NormArgs};

pub const FLEET_CONFIG: &str = r#"# fieldtune fleet: one device as a Flower SuperNode (flwr 1.42.0 Fleet API).
# SuperLink's Fleet API address: host:port (HTTPS) or a URL.
superlink = "127.0.0.1:8000"
# Plain HTTP: allowed only to a loopback SuperLink (tests, a SuperLink on the device itself).
insecure = false
# PEM file of the CA that signed the SuperLink's certificate (default: the web PKI roots).
# ca = "/etc/fieldtune/fleet-ca.pem"
# The name the SuperLink's certificate carries, when it is not the host of `superlink`
# (e.g. superlink = "10.0.0.5:8000", server_name = "link.example"): SNI and verification.
# server_name = "link.example"
# The node's P-384 key (PKCS#8 PEM); created with mode 0600 when missing. Its public key
# is written beside it (<key>.pub) for `flwr supernode register`.
key = "fleet-node.key"
# Heartbeat period announced to the SuperLink (seconds).
heartbeat_s = 30.0
# Model folder (model.onnx + model.toml); the server's arrays must match its initializers.
model = "models/mnist-cnn"
# Labeled anchors of the source domain (one sub-folder per class).
labeled = "models/mnist-cnn/anchors"
# This device's unlabeled frames (flat or class folders; labels are never used or sent).
unlabeled = "data/opencv-digits"
# Use every slice_of-th frame starting at slice (this device's share; 0 and 1: all frames).
slice = 0
slice_of = 1
# Adaptation recipe and optimizer steps per train message.
recipe = "uda-im"
steps = 50
seed = 0
# What a reply sends: "all" (every trained parameter and buffer), "fedbn" (BatchNorm
# running statistics stay on the device) or "trained" (the same here: a reply holds what
# the recipe trained; the server's initial arrays are then only those).
send = "all"
# Stop after this many messages / after this long without one (0: never).
max_messages = 0
idle_exit_s = 0.0
"#;

#[derive(Deserialize, Clone, Debug)]
pub struct FleetConfig {
    /// The SuperLink, TLS, node key, heartbeat and `send` (shared with `fieldtune run`'s
    /// `[fleet]`).
    #[serde(flatten)]
    link: LinkConfig,
    model: PathBuf,
    labeled: PathBuf,
    unlabeled: PathBuf,
    slice: usize,
    slice_of: usize,
    recipe: String,
    steps: usize,
    seed: u64,
    #[serde(default)]
    max_messages: usize,
    #[serde(default)]
    idle_exit_s: f64,
}

/// This file's own keys (beside [`LinkConfig::KEYS`]).
const OWN_KEYS: &[&str] = &[
    "model",
    "labeled",
    "unlabeled",
    "slice",
    "slice_of",
    "recipe",
    "steps",
    "seed",
    "max_messages",
    "idle_exit_s",
];

/// Parses a fleet config; a key neither this file nor [`LinkConfig`] knows is an error
/// (serde's `deny_unknown_fields` does not work across `flatten`).
fn parse_config(text: &str) -> Result<FleetConfig> {
    let table: toml::Table = toml::from_str(text)?;
    if let Some(k) = table
        .keys()
        .find(|k| !OWN_KEYS.contains(&k.as_str()) && !LinkConfig::KEYS.contains(&k.as_str()))
    {
        bail!("unknown key '{k}'");
    }
    for k in ["superlink", "key", "heartbeat_s", "send"] {
        if !table.contains_key(k) {
            bail!("missing key '{k}'");
        }
    }
    Ok(table.try_into()?)
}

#[derive(Args)]
pub struct FleetArgs {
    /// The fleet settings (TOML; --print-config shows every key with its meaning).
    #[arg(long, required_unless_present_any = ["print_config"])]
    config: Option<PathBuf>,
    /// Print a commented config and exit.
    #[arg(long)]
    print_config: bool,
    /// Write the model's arrays that a reply would send to FILE (safetensors) and exit: the
    /// ServerApp's initial arrays.
    #[arg(long, value_name = "FILE")]
    export_arrays: Option<PathBuf>,
    /// Score the model with the arrays in FILE (safetensors) on labeled DIR, print
    /// `accuracy: X` and exit: the ServerApp's server-side evaluation.
    #[arg(long, value_names = ["FILE", "DIR"], num_args = 2)]
    eval_arrays: Option<Vec<PathBuf>>,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

fn load_config(path: &Path) -> Result<FleetConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let c =
        parse_config(&text).with_context(|| format!("{}: not a fleet config", path.display()))?;
    if c.slice_of == 0 || (c.slice_of > 1 && c.slice >= c.slice_of) {
        bail!(
            "{}: slice {} of {} is out of range",
            path.display(),
            c.slice,
            c.slice_of
        );
    }
    if let Err((key, why)) = c.link.check() {
        bail!("{}: {key}: {why}", path.display());
    }
    Ok(c)
}

pub fn run(a: FleetArgs, engine_args: &EngineArgs) -> Result<()> {
    if a.print_config {
        print!("{FLEET_CONFIG}");
        return Ok(());
    }
    let path = a.config.as_deref().expect("clap requires --config");
    let c = load_config(path)?;
    let m = open_model(&c.model, &NormArgs::default())?;
    let e = engine(engine_args)?;
    let source = m.float_initializers()?;
    if let Some(out) = &a.export_arrays {
        let sent: BTreeMap<String, Tensor> = source
            .into_iter()
            .filter(|(n, _)| c.link.send != SendSet::Fedbn || !is_bn_stat(n))
            .collect();
        std::fs::write(out, fieldtune_tensor::st::to_bytes(&sent, &HashMap::new()))
            .with_context(|| format!("writing {}", out.display()))?;
        println!("{}: {} arrays", out.display(), sent.len());
        return Ok(());
    }
    if let Some(v) = &a.eval_arrays {
        let bytes = std::fs::read(&v[0]).with_context(|| format!("reading {}", v[0].display()))?;
        let (arrays, _) = fieldtune_tensor::st::from_bytes(&bytes)
            .with_context(|| format!("{}", v[0].display()))?;
        let arrays: Vec<(String, Tensor)> = arrays.into_iter().collect();
        let params = checked_params(&source, &arrays)
            .map_err(|e| anyhow::anyhow!("{}: {e}", v[0].display()))?;
        let (imgs, labels) = load_labeled(&v[1], &m)?;
        let r = eval_model(e.as_ref(), &m, Some(&params), &imgs, &labels, 250)?;
        println!("accuracy: {:.4}", r.accuracy());
        return Ok(());
    }
    let (anchors, anchor_labels) =
        load_labeled(&c.labeled, &m).with_context(|| format!("anchors {}", c.labeled.display()))?;
    let ds = fieldtune_frames::Dataset::unlabeled(&c.unlabeled, Some(&m.config.classes))?;
    let all = ds.load_all(&m.config)?;
    let frames: Vec<Image8> = all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| c.slice_of <= 1 || i % c.slice_of == c.slice)
        .map(|(_, f)| f)
        .collect();
    println!(
        "fleet: {} frames (slice {} of {}), {} anchors, model {}",
        frames.len(),
        c.slice,
        c.slice_of,
        anchors.len(),
        c.model.display()
    );
    let http = c.link.connect()?;
    let node_cfg = NodeConfig {
        heartbeat_s: c.link.heartbeat_s,
        max_messages: (c.max_messages > 0).then_some(c.max_messages),
        idle_exit_s: (c.idle_exit_s > 0.0).then_some(c.idle_exit_s),
        ..NodeConfig::default()
    };
    let mut h = Device {
        e: e.as_ref(),
        m: &m,
        c: &c,
        source,
        frames,
        anchors,
        anchor_labels,
    };
    let stop = AtomicBool::new(false);
    let n = fieldtune_fleet::run_node(&http, &node_cfg, &mut h, &stop)?;
    println!("fleet: handled {n} messages");
    Ok(())
}

struct Device<'a> {
    e: &'a dyn Engine,
    m: &'a ModelDir,
    c: &'a FleetConfig,
    source: HashMap<String, Tensor>,
    frames: Vec<Image8>,
    anchors: Vec<Image8>,
    anchor_labels: Vec<usize>,
}

impl Device<'_> {
    fn answer(&mut self, req: &Request) -> Result<Reply> {
        let params = checked_params(&self.source, &req.arrays).map_err(anyhow::Error::msg)?;
        let cfgv = |k: &str| {
            req.config
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        // FedProx: mu/2 * ||w - w_global||^2 in every local step, w_global = these arrays.
        let mu = match cfgv("proximal-mu") {
            None => 0.0,
            Some(ConfigValue::F64(v)) if v.is_finite() && v >= 0.0 => v as f32,
            Some(ConfigValue::I64(v)) if v >= 0 => v as f32,
            Some(v) => bail!("config 'proximal-mu' = {v:?}: a number >= 0 expected"),
        };
        let model = self.m.with_weights(&params)?;
        let round = match cfgv("server-round") {
            Some(ConfigValue::I64(r)) => r as u64,
            _ => 0,
        };
        let mut metrics = vec![("num-examples".to_string(), self.frames.len() as f64)];
        let mut arrays = Vec::new();
        let final_params = if req.kind == "train" {
            let mut cfg = AdaptConfig::preset(&self.c.recipe)?;
            cfg.steps = self.c.steps;
            cfg.seed = self.c.seed.wrapping_mul(1000).wrapping_add(round);
            cfg.eval_every = 0;
            cfg.loss.proximal_mu = mu;
            let data = AdaptData {
                labeled: &self.anchors,
                labels: &self.anchor_labels,
                unlabeled: &self.frames,
                eval: None,
            };
            let out = adapt(self.e, &model, &cfg, &data, &mut |_| {})?;
            if let Some(last) = out.history.last() {
                metrics.extend(last.metrics.iter().map(|(n, v)| (n.clone(), f64::from(*v))));
            }
            for (n, t) in &out.params {
                if sends(self.c.link.send, n, true) {
                    arrays.push((n.clone(), t.clone()));
                }
            }
            let mut p = params.clone();
            p.extend(out.params);
            p
        } else {
            params
        };
        let r = eval_model(
            self.e,
            self.m,
            Some(&final_params),
            &self.anchors,
            &self.anchor_labels,
            250,
        )?;
        metrics.push(("anchor-accuracy".to_string(), r.accuracy()));
        println!(
            "fleet: {} round {round}: anchor accuracy {:.4}, {} arrays sent",
            req.kind,
            r.accuracy(),
            arrays.len()
        );
        Ok(Reply { arrays, metrics })
    }
}

impl Handler for Device<'_> {
    fn handle(&mut self, req: &Request) -> std::result::Result<Reply, String> {
        if req.kind != "train" && req.kind != "evaluate" {
            return Err(format!(
                "message type '{}' is not handled (train, evaluate)",
                req.kind
            ));
        }
        self.answer(req).map_err(|e| format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_config_loads_with_its_optional_keys_set() {
        let text = FLEET_CONFIG
            .replace("# ca = ", "ca = ")
            .replace("# server_name = ", "server_name = ");
        let c = parse_config(&text).unwrap();
        assert_eq!(c.link.server_name.as_deref(), Some("link.example"));
        assert_eq!(
            c.link.ca,
            Some(PathBuf::from("/etc/fieldtune/fleet-ca.pem"))
        );
        let e = parse_config(&format!("{FLEET_CONFIG}\nclock_skew_s = 5\n")).unwrap_err();
        assert!(e.to_string().contains("unknown key 'clock_skew_s'"), "{e}");
    }
}
