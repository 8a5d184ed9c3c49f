//! Which engine a train step is compiled for. The `portable` step uses only standard ai.onnx
//! ops and is the reference in every test; a tuned target may replace subgraphs by
//! fieldtune-domain ops ([`DOMAIN`]) whose one-pass kernels (`fieldtune-kernels`) that engine
//! registers, and keeps the standard form elsewhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ir::Graph;

pub use fieldtune_kernels::DOMAIN;

/// The engine a train step is tuned for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Standard ai.onnx ops only: runs on every engine.
    #[default]
    Portable,
    /// ONNX Runtime on its CPU provider, which registers the fieldtune-domain ops.
    OrtCpu,
    /// ONNX Runtime with CUDA: standard ops (a CPU custom op inside a CUDA graph would copy
    /// its tensors across the bus every step, and no CUDA kernel exists yet).
    OrtCuda,
    /// tract, which registers the fieldtune-domain ops with its ONNX parser.
    Tract,
}

/// The environment variable that overrides [`TrainSpec::target`](crate::TrainSpec::target)
/// for engines that run fieldtune-domain ops (see [`Target::for_engine`]): `portable` or
/// `tuned`. The test suites run tuned with `FIELDTUNE_TARGET=tuned`.
pub const TARGET_ENV: &str = "FIELDTUNE_TARGET";

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Portable,
        Target::OrtCpu,
        Target::OrtCuda,
        Target::Tract,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Portable => "portable",
            Target::OrtCpu => "ort-cpu",
            Target::OrtCuda => "ort-cuda",
            Target::Tract => "tract",
        }
    }

    /// Parses `portable|ort-cpu|ort-cuda|tract`.
    pub fn parse(s: &str) -> Result<Target, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown target '{s}' (portable, ort-cpu, ort-cuda or tract)"))
    }

    /// Whether graphs for this target use fieldtune-domain ops.
    pub fn uses_fieldtune_ops(self) -> bool {
        matches!(self, Target::OrtCpu | Target::Tract)
    }

    /// The target for an engine: `tuned` (the engine's own target when it runs
    /// fieldtune-domain ops, else portable) or `portable`. `FIELDTUNE_TARGET` (if set to
    /// `tuned` or `portable`) overrides `requested`, so whole test suites switch.
    pub fn for_engine(requested: Target, tuned: Target, runs_fieldtune_ops: bool) -> Target {
        let want_tuned = match std::env::var(TARGET_ENV).ok().as_deref() {
            Some("tuned") => true,
            Some("portable") => false,
            _ => requested != Target::Portable,
        };
        if want_tuned && runs_fieldtune_ops {
            tuned
        } else {
            Target::Portable
        }
    }
}

/// What tuning changed in a train step: node counts before and after, the fieldtune-domain
/// ops it holds, and the standard ops it no longer needs (by op type, fewest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TuneReport {
    pub nodes_portable: usize,
    pub nodes_tuned: usize,
    /// fieldtune-domain ops of the tuned graph, by name.
    pub fused: BTreeMap<String, usize>,
    /// Standard ops the tuned graph has fewer of, with how many fewer.
    pub replaced: BTreeMap<String, usize>,
}

impl TuneReport {
    pub fn of(portable: &Graph, tuned: &Graph) -> TuneReport {
        let count = |g: &Graph, fused: bool| {
            let mut m = BTreeMap::<String, usize>::new();
            for n in g.nodes.iter().filter(|n| (n.domain == DOMAIN) == fused) {
                *m.entry(n.op.clone()).or_default() += 1;
            }
            m
        };
        let (before, after) = (count(portable, false), count(tuned, false));
        let replaced = before
            .iter()
            .filter_map(|(op, &n)| {
                let left = after.get(op).copied().unwrap_or(0);
                (n > left).then(|| (op.clone(), n - left))
            })
            .collect();
        TuneReport {
            nodes_portable: portable.nodes.len(),
            nodes_tuned: tuned.nodes.len(),
            fused: count(tuned, true),
            replaced,
        }
    }
}

impl std::fmt::Display for TuneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |m: &BTreeMap<String, usize>| {
            if m.is_empty() {
                return "none".to_string();
            }
            m.iter()
                .map(|(op, n)| format!("{op} x{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "nodes: {} portable -> {} tuned",
            self.nodes_portable, self.nodes_tuned
        )?;
        writeln!(f, "{DOMAIN} ops: {}", list(&self.fused))?;
        write!(f, "standard ops replaced: {}", list(&self.replaced))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for t in Target::ALL {
            assert_eq!(Target::parse(t.name()), Ok(t));
        }
        assert!(Target::parse("cuda")
            .unwrap_err()
            .contains("unknown target 'cuda'"));
        assert!(!Target::OrtCuda.uses_fieldtune_ops());
        assert!(!Target::Portable.uses_fieldtune_ops());
    }
}
