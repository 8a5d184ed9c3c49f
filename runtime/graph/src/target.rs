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

/// The environment variable that picks the target where no command or config asks for one
/// (see [`TargetChoice::resolve`]): `portable` or `tuned`. The test suites run tuned with
/// `FIELDTUNE_TARGET=tuned`.
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
        by_name(
            &Target::ALL,
            Target::name,
            s,
            "portable, ort-cpu, ort-cuda or tract",
        )
    }

    /// Whether graphs for this target use fieldtune-domain ops.
    pub fn uses_fieldtune_ops(self) -> bool {
        matches!(self, Target::OrtCpu | Target::Tract)
    }
}

/// The target a command asks for (`--target`, `[adapt] target`): resolved per engine by
/// [`TargetChoice::resolve`] once the engine that runs the train step is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetChoice {
    /// Standard ops only, on every engine.
    Portable,
    /// The engine's tuned target: fieldtune-domain ops where it registers them (ONNX Runtime
    /// on CPU, tract); standard ops elsewhere (CUDA, TensorRT).
    Tuned,
    /// Tuned where the engine registers the fieldtune-domain ops (ort-cpu, tract), portable
    /// elsewhere (CUDA and TensorRT plans).
    Auto,
}

impl TargetChoice {
    pub const ALL: [TargetChoice; 3] = [
        TargetChoice::Portable,
        TargetChoice::Tuned,
        TargetChoice::Auto,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TargetChoice::Portable => "portable",
            TargetChoice::Tuned => "tuned",
            TargetChoice::Auto => "auto",
        }
    }

    /// Parses `portable|tuned|auto`.
    pub fn parse(s: &str) -> Result<TargetChoice, String> {
        by_name(
            &TargetChoice::ALL,
            TargetChoice::name,
            s,
            "portable, tuned or auto",
        )
    }

    /// The target of a train step run by an engine whose tuned target is `tuned` and which
    /// does or does not run fieldtune-domain ops. `None` (nothing asked) is
    /// `FIELDTUNE_TARGET` when set to `portable` or `tuned`, else portable.
    pub fn resolve(
        choice: Option<TargetChoice>,
        tuned: Target,
        runs_fieldtune_ops: bool,
    ) -> Target {
        let choice = choice.unwrap_or_else(|| match std::env::var(TARGET_ENV).ok().as_deref() {
            Some("tuned") => TargetChoice::Tuned,
            _ => TargetChoice::Portable,
        });
        match choice {
            TargetChoice::Portable => Target::Portable,
            TargetChoice::Tuned | TargetChoice::Auto if runs_fieldtune_ops => tuned,
            // A target with standard ops only (ort-cuda) serves; never fieldtune-domain ops
            // on an engine that does not register them.
            TargetChoice::Tuned if !tuned.uses_fieldtune_ops() => tuned,
            TargetChoice::Tuned | TargetChoice::Auto => Target::Portable,
        }
    }
}

impl std::fmt::Display for TargetChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The one of `all` named `s` (the `--target` parsers); else an error listing `names`.
fn by_name<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    s: &str,
    names: &str,
) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|&t| name(t) == s)
        .ok_or_else(|| format!("unknown target '{s}' ({names})"))
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

    #[test]
    fn choices_resolve_per_engine_and_never_to_ops_an_engine_lacks() {
        use TargetChoice::*;
        for c in TargetChoice::ALL {
            assert_eq!(TargetChoice::parse(c.name()), Ok(c));
        }
        assert!(TargetChoice::parse("ort-cpu")
            .unwrap_err()
            .contains("unknown target 'ort-cpu' (portable, tuned or auto)"));
        let r = |c, t, runs| TargetChoice::resolve(Some(c), t, runs);
        for t in [Target::OrtCpu, Target::Tract] {
            assert_eq!(r(Portable, t, true), Target::Portable);
            assert_eq!(r(Tuned, t, true), t);
            assert_eq!(r(Auto, t, true), t);
            // An engine that does not register the ops never gets them.
            assert_eq!(r(Tuned, t, false), Target::Portable);
            assert_eq!(r(Auto, t, false), Target::Portable);
        }
        // CUDA/TensorRT plans: tuned is ONNX Runtime's standard-op CUDA target, auto portable.
        assert_eq!(r(Tuned, Target::OrtCuda, false), Target::OrtCuda);
        assert_eq!(r(Auto, Target::OrtCuda, false), Target::Portable);
    }
}
