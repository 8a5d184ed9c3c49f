//! Forward instances of the inference model inside a graph under construction: the train
//! step's gradient pass and the objectives' no-gradient passes (weak view, teacher, CoTTA's
//! augmented views, rotations), and the plain inference graph.

use std::collections::{HashMap, HashSet};

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{Dim, Elem, Graph, Node};
use crate::lower::{BatchNormMode, RunningUpdate};
use crate::random;

/// Image shape `[C, H, W]` of the model input `name`; the batch dim may be symbolic.
pub fn image_shape(g: &Graph, name: &str) -> Result<[usize; 3]> {
    let io = g
        .inputs
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| GraphError::Input {
            input: name.into(),
            reason: format!(
                "not an input of the model (inputs: {})",
                g.inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    if io.elem != Elem::F32 || io.dims.len() != 4 {
        return Err(GraphError::Input {
            input: name.into(),
            reason: format!(
                "expected a float32 NCHW tensor, found {:?} {:?}",
                io.elem, io.dims
            ),
        });
    }
    let mut s = [0; 3];
    for (i, d) in io.dims[1..].iter().enumerate() {
        s[i] = match d {
            Dim::Fixed(n) => *n,
            Dim::Symbolic(p) => {
                return Err(GraphError::Input {
                    input: name.into(),
                    reason: format!(
                        "dimension {} is symbolic ('{p}'); only the batch may be",
                        i + 1
                    ),
                })
            }
        };
    }
    Ok(s)
}

/// How one forward instance treats BatchNormalization.
pub(crate) struct BnLowering<'a> {
    pub mode: BatchNormMode,
    /// Where the running-statistics updates go (`None`: this instance does not update them).
    pub updates: Option<&'a mut Vec<RunningUpdate>>,
}

/// Adds one forward instance of `g` reading `x`, naming its tensors under `prefix`;
/// returns the name of `output` in this instance. BatchNormalization nodes are lowered when
/// `bn` is given and kept as they are otherwise (inference).
#[allow(clippy::too_many_arguments)]
pub(crate) fn instantiate(
    b: &mut Builder,
    g: &Graph,
    input: &str,
    x: &str,
    output: &str,
    prefix: &str,
    shared: &HashSet<String>,
    mut bn: Option<BnLowering<'_>>,
    subst: Option<&HashMap<String, String>>,
    dropout: Option<(&str, u64)>,
) -> Result<String> {
    // Identity nodes over a shared tensor (exporters emit them when they deduplicate equal
    // initializers) become aliases, so gradients accumulate on the tensor itself.
    let mut alias: HashMap<&str, &str> = HashMap::new();
    for n in &g.nodes {
        if n.op == "Identity" && n.inputs.len() == 1 && n.outputs.len() == 1 {
            let src = alias
                .get(n.inputs[0].as_str())
                .copied()
                .unwrap_or(&n.inputs[0]);
            if shared.contains(src) {
                alias.insert(&n.outputs[0], src);
            }
        }
    }
    let rename = |n: &str| -> String {
        let n = alias.get(n).copied().unwrap_or(n);
        if n.is_empty() {
            String::new()
        } else if shared.contains(n) {
            subst
                .and_then(|m| m.get(n))
                .cloned()
                .unwrap_or_else(|| n.to_string())
        } else if n == input {
            x.to_string()
        } else {
            format!("{prefix}/{n}")
        }
    };
    for n in &g.nodes {
        if n.outputs.len() == 1 && alias.contains_key(n.outputs[0].as_str()) {
            continue;
        }
        let node = Node {
            name: format!("{prefix}/{}", n.name),
            op: n.op.clone(),
            domain: n.domain.clone(),
            inputs: n.inputs.iter().map(|i| rename(i)).collect(),
            outputs: n.outputs.iter().map(|o| rename(o)).collect(),
            attrs: n.attrs.clone(),
        };
        if let (Some((step, seed)), "Dropout") = (dropout, n.op.as_str()) {
            // Per-node streams: the node's name, or its (unique) output when it has none.
            let id = if n.name.is_empty() {
                &n.outputs[0]
            } else {
                &n.name
            };
            let key = format!("dropout/{prefix}/{id}");
            random::dropout(b, &node, step, seed, &key)?;
            continue;
        }
        match bn.as_mut() {
            Some(low) if n.op == "BatchNormalization" => {
                if let Some(up) = crate::lower::batch_norm(b, &node, low.mode)? {
                    if let Some(list) = low.updates.as_mut() {
                        list.push(up);
                    }
                }
            }
            _ => b.add(node)?,
        }
    }
    if !g.outputs.iter().any(|o| o.name == output)
        && !g
            .nodes
            .iter()
            .any(|n| n.outputs.iter().any(|o| o == output))
    {
        return Err(GraphError::Output {
            output: output.into(),
            reason: "not an output of the model".into(),
        });
    }
    Ok(rename(output))
}

/// The model as the train step instantiates it: its graph, image input and logits output,
/// the initializers every instance shares, and the BatchNormalization mode.
pub(crate) struct Forward<'a> {
    pub g: &'a Graph,
    pub input: &'a str,
    pub output: &'a str,
    pub shared: HashSet<String>,
    pub batchnorm: BatchNormMode,
}

impl Forward<'_> {
    /// One forward pass over `x` under `prefix` with BatchNormalization lowered (running
    /// statistics updates go to `updates` when given), the shared tensors renamed by `subst`
    /// and Dropout in training form when `dropout` (step input, seed) is given; returns the
    /// output's name.
    pub fn pass(
        &self,
        b: &mut Builder,
        x: &str,
        prefix: &str,
        updates: Option<&mut Vec<RunningUpdate>>,
        subst: Option<&HashMap<String, String>>,
        dropout: Option<(&str, u64)>,
    ) -> Result<String> {
        instantiate(
            b,
            self.g,
            self.input,
            x,
            self.output,
            prefix,
            &self.shared,
            Some(BnLowering {
                mode: self.batchnorm,
                updates,
            }),
            subst,
            dropout,
        )
    }
}
