//! What one entry of the op table holds, and the helpers its gradient rules share.

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::Node;

use super::value::Value;

/// Infers a node's outputs from its inputs (`None` for absent optional inputs); outputs
/// may carry constant values (shape-chain folding).
pub type InferFn = fn(&Node, &[Option<&Value>]) -> Result<Vec<Value>>;

/// The inputs of a node that gradients flow into.
pub type GradInputsFn = fn(&Node) -> Vec<usize>;

/// A vector-Jacobian product: given the gradients of the node's outputs (`None` where none
/// flows), emits standard ai.onnx ops through the builder and returns one gradient per input
/// (`None` for inputs that take none).
pub type VjpFn = fn(&mut Builder, &Node, &[Option<String>]) -> Result<Vec<Option<String>>>;

/// How gradients pass through an op.
pub enum Grad {
    /// Outputs never carry gradients (integer, boolean or piecewise-constant results).
    Never,
    /// Differentiable, but fieldtune has no rule: refused by name when the op is on the path
    /// from a parameter to the loss.
    NoRule,
    /// `inputs` take gradients, computed by `vjp`.
    Rule { inputs: GradInputsFn, vjp: VjpFn },
}

/// One op of the table: its ONNX name, shape rule and gradient.
pub struct OpDef {
    pub name: &'static str,
    pub infer: InferFn,
    /// Whether a node whose result [`OpDef::infer`] computes as a constant is folded into an
    /// initializer by the builder.
    pub folds: bool,
    pub grad: Grad,
}

/// Gradient inputs: the first only.
pub fn input0(_: &Node) -> Vec<usize> {
    vec![0]
}

/// Gradient inputs: every present input.
pub fn present(n: &Node) -> Vec<usize> {
    (0..n.inputs.len())
        .filter(|&i| n.input(i).is_some())
        .collect()
}

/// The gradient of the node's first output, which every single-output rule needs.
pub fn dy(n: &Node, gy: &[Option<String>]) -> Result<String> {
    gy.first()
        .cloned()
        .flatten()
        .ok_or_else(|| GraphError::node(n, "only the first output may carry a gradient"))
}

/// One gradient per input: `g` for input 0, none for the others.
pub fn only(n: &Node, g: String) -> Vec<Option<String>> {
    let mut out = vec![None; n.inputs.len()];
    out[0] = Some(g);
    out
}

pub fn vec_i64(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// Sums a gradient of shape `from` down to the broadcast operand shape `to`.
pub fn unbroadcast(b: &mut Builder, g: &str, to: &[usize]) -> Result<String> {
    let from = b.shape(g)?;
    if from == to {
        return Ok(g.into());
    }
    let off = from.len() - to.len();
    let axes: Vec<i64> = (0..from.len())
        .filter(|&i| i < off || (to[i - off] == 1 && from[i] != 1))
        .map(|i| i as i64)
        .collect();
    let r = if axes.is_empty() {
        g.to_string()
    } else {
        b.reduce("ReduceSum", g, &axes, true)?
    };
    b.reshape(&r, to)
}

/// An entry: `(name, shape rule, folds, gradient)`.
pub const fn def(name: &'static str, infer: InferFn, folds: bool, grad: Grad) -> OpDef {
    OpDef {
        name,
        infer,
        folds,
        grad,
    }
}

/// A rule whose gradient flows into input 0 only.
pub const fn rule(vjp: VjpFn) -> Grad {
    Grad::Rule {
        inputs: input0,
        vjp,
    }
}

/// A rule whose gradient flows into every present input.
pub const fn rule_all(vjp: VjpFn) -> Grad {
    Grad::Rule {
        inputs: present,
        vjp,
    }
}

/// Input `i` of a node under shape inference, which must be present.
pub fn req<'a>(node: &Node, ins: &[Option<&'a Value>], i: usize) -> Result<&'a Value> {
    ins.get(i)
        .copied()
        .flatten()
        .ok_or_else(|| GraphError::node(node, format!("input {i} is required")))
}

/// The result of a gradient rule.
pub type Grads = Result<Vec<Option<String>>>;
