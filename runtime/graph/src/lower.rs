//! Lowering of ops whose training behaviour differs from their inference behaviour into
//! primitive ops that have gradient rules. BatchNormalization in a train step becomes either
//! batch-statistics normalisation (PyTorch's `model.train()`, with the running statistics
//! updated as extra outputs) or a per-channel affine map from the running statistics
//! (frozen, PyTorch's `model.eval()`); either way its scale and bias can train.

use serde::{Deserialize, Serialize};

use crate::builder::{Builder, CustomVjp};
use crate::error::{GraphError, Result};
use crate::ir::{attr, Node};
use crate::ops::norm::{standardize, Standardized};

/// How BatchNormalization behaves in a train step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchNormMode {
    /// Normalise with the statistics of the batch (biased variance) and update the running
    /// statistics: `running = running * momentum + batch * (1 - momentum)`, with the
    /// unbiased batch variance, as PyTorch does in training mode.
    #[default]
    Train,
    /// Normalise with the running statistics, which stay fixed (inference behaviour).
    Frozen,
}

/// The next values of one BatchNormalization's running statistics:
/// `(running_mean input, its new value)`, `(running_var input, its new value)`.
pub type RunningUpdate = [(String, String); 2];

/// Emits `node` (a BatchNormalization whose input names are already resolved) as primitive
/// ops writing its first output. In `Train` mode, returns the running-statistics update.
pub fn batch_norm(
    b: &mut Builder,
    node: &Node,
    mode: BatchNormMode,
) -> Result<Option<RunningUpdate>> {
    if node.int("training_mode", 0) != 0 {
        return Err(GraphError::node(
            node,
            "BatchNormalization exported in training mode; export the model in eval mode (the train step chooses batch statistics itself)",
        ));
    }
    let input = |i: usize| {
        node.input(i)
            .map(str::to_string)
            .ok_or_else(|| GraphError::node(node, format!("input {i} is required")))
    };
    let (x, scale, bias, mean, var) = (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?);
    let eps = node.float("epsilon", 1e-5);
    let momentum = node.float("momentum", 0.9);
    let xs = b.shape(&x)?;
    if xs.len() < 2 {
        return Err(GraphError::node(
            node,
            format!("input of rank {} (need N, C, ...)", xs.len()),
        ));
    }
    let c = xs[1];
    let mut bshape = vec![1usize; xs.len()];
    bshape[1] = c;
    let y = node.outputs[0].clone();
    let e = b.scalar(eps);
    let emit_add = |b: &mut Builder, a: &str, c: &str| -> Result<()> {
        let name = b.fresh("bn_out");
        b.add(Node {
            name,
            op: "Add".into(),
            domain: String::new(),
            inputs: vec![a.into(), c.into()],
            outputs: vec![y.clone()],
            attrs: vec![],
        })
    };
    match mode {
        BatchNormMode::Frozen => {
            let ve = b.op("Add", &[&var, &e], vec![])?;
            let sd = b.op("Sqrt", &[&ve], vec![])?;
            let k = b.op("Div", &[&scale, &sd], vec![])?;
            let mk = b.op("Mul", &[&mean, &k], vec![])?;
            let shift = b.op("Sub", &[&bias, &mk], vec![])?;
            let k4 = b.reshape(&k, &bshape)?;
            let s4 = b.reshape(&shift, &bshape)?;
            let xk = b.op("Mul", &[&x, &k4], vec![])?;
            emit_add(b, &xk, &s4)?;
            Ok(None)
        }
        BatchNormMode::Train if b.fieldtune_ops() => {
            // One fieldtune-domain node: statistics, normalisation and running update.
            let attrs = vec![
                attr::float("epsilon", eps),
                attr::float("momentum", momentum),
            ];
            let ins = [x.as_str(), &scale, &bias, &mean, &var];
            let outs = b.fused("BatchNormTrain", &ins, (Some(&y), 5), attrs)?;
            b.set_custom_vjp(
                &y,
                CustomVjp::BatchNormTrainFused {
                    x: x.clone(),
                    scale: scale.clone(),
                    bias: bias.clone(),
                    mean: outs[1].clone(),
                    inv_std: outs[2].clone(),
                },
            );
            Ok(Some([(mean, outs[3].clone()), (var, outs[4].clone())]))
        }
        BatchNormMode::Train => {
            let axes: Vec<i64> = std::iter::once(0).chain(2..xs.len() as i64).collect();
            let n: usize = xs.iter().product::<usize>() / c;
            let Standardized {
                mean: mu,
                var: v,
                inv_std: inv,
                xhat: xh,
            } = standardize(b, &x, &axes, &e)?;
            let s4 = b.reshape(&scale, &bshape)?;
            let b4 = b.reshape(&bias, &bshape)?;
            let xs4 = b.op("Mul", &[&xh, &s4], vec![])?;
            emit_add(b, &xs4, &b4)?;
            b.set_custom_vjp(
                &y,
                CustomVjp::BatchNormTrain {
                    x: x.clone(),
                    scale: scale.clone(),
                    bias: bias.clone(),
                    xhat: xh,
                    inv_std: inv,
                    scale_b: s4,
                    axes: axes.clone(),
                    count: n,
                },
            );
            // Running statistics (no gradients).
            let mu_c = b.stop_gradient(&mu)?;
            let mu_c = b.reshape(&mu_c, &[c])?;
            let v_c = b.stop_gradient(&v)?;
            let v_c = b.reshape(&v_c, &[c])?;
            let m = b.scalar(momentum);
            let keep_mean = b.op("Mul", &[&mean, &m], vec![])?;
            let w_mean = b.scalar(1.0 - momentum);
            let add_mean = b.op("Mul", &[&mu_c, &w_mean], vec![])?;
            let new_mean = b.op("Add", &[&keep_mean, &add_mean], vec![])?;
            let unbiased = if n > 1 {
                n as f32 / (n - 1) as f32
            } else {
                1.0
            };
            let keep_var = b.op("Mul", &[&var, &m], vec![])?;
            let w_var = b.scalar((1.0 - momentum) * unbiased);
            let add_var = b.op("Mul", &[&v_c, &w_var], vec![])?;
            let new_var = b.op("Add", &[&keep_var, &add_var], vec![])?;
            Ok(Some([(mean, new_mean), (var, new_var)]))
        }
    }
}

/// A BatchNormalization node in inference form (e.g. for tests and hand-built models).
pub fn batch_norm_node(
    name: &str,
    inputs: [&str; 5],
    output: &str,
    epsilon: f32,
    momentum: f32,
) -> Node {
    Node {
        name: name.into(),
        op: "BatchNormalization".into(),
        domain: String::new(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.into()],
        attrs: vec![
            attr::float("epsilon", epsilon),
            attr::float("momentum", momentum),
        ],
    }
}
