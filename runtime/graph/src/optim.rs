//! Optimizer blocks: the parameter update as ONNX ops, with PyTorch's exact rules.

use crate::builder::Builder;
use crate::error::Result;
use crate::spec::Optimizer;

/// One optimizer state tensor of a parameter: its input name and the output that replaces it.
pub struct StateSlot {
    pub input: String,
    pub output: String,
}

/// Per-parameter results: the new value and the state slots.
pub struct Update {
    pub new_param: String,
    pub state: Vec<StateSlot>,
}

/// Names of the state tensors `opt` keeps per parameter.
pub fn state_names(opt: &Optimizer, param: &str) -> Vec<String> {
    match opt {
        Optimizer::AdamW { .. } => vec![format!("adam.m.{param}"), format!("adam.v.{param}")],
        Optimizer::Sgd { momentum, .. } if *momentum != 0.0 => {
            vec![format!("sgd.momentum.{param}")]
        }
        Optimizer::Sgd { .. } => vec![],
    }
}

/// Emits the update of `param` with gradient `grad`. `lr` and `step` are scalar inputs
/// (`step` counts from 1 at the first update); `state` are the state inputs in the order of
/// [`state_names`].
pub fn update(
    b: &mut Builder,
    opt: &Optimizer,
    param: &str,
    grad: &str,
    lr: &str,
    step: &str,
    state: &[String],
) -> Result<Update> {
    match *opt {
        Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let (m, v) = (&state[0], &state[1]);
            // p <- p * (1 - lr * wd)
            let p = if weight_decay != 0.0 {
                let wd = b.scalar(weight_decay);
                let lw = b.op("Mul", &[lr, &wd], vec![])?;
                let one = b.scalar(1.0);
                let f = b.op("Sub", &[&one, &lw], vec![])?;
                b.op("Mul", &[param, &f], vec![])?
            } else {
                param.to_string()
            };
            let (b1, b2) = (b.scalar(beta1), b.scalar(beta2));
            let (c1, c2) = (b.scalar(1.0 - beta1), b.scalar(1.0 - beta2));
            let m1 = b.op("Mul", &[m, &b1], vec![])?;
            let g1 = b.op("Mul", &[grad, &c1], vec![])?;
            let m_new = b.op("Add", &[&m1, &g1], vec![])?;
            let v1 = b.op("Mul", &[v, &b2], vec![])?;
            let gg = b.op("Mul", &[grad, grad], vec![])?;
            let g2 = b.op("Mul", &[&gg, &c2], vec![])?;
            let v_new = b.op("Add", &[&v1, &g2], vec![])?;
            // bias corrections from the step count
            let one = b.scalar(1.0);
            let p1 = b.op("Pow", &[&b1, step], vec![])?;
            let bc1 = b.op("Sub", &[&one, &p1], vec![])?;
            let p2 = b.op("Pow", &[&b2, step], vec![])?;
            let bc2 = b.op("Sub", &[&one, &p2], vec![])?;
            let sbc2 = b.op("Sqrt", &[&bc2], vec![])?;
            let sv = b.op("Sqrt", &[&v_new], vec![])?;
            let den = b.op("Div", &[&sv, &sbc2], vec![])?;
            let e = b.scalar(eps);
            let den = b.op("Add", &[&den, &e], vec![])?;
            let stepsize = b.op("Div", &[lr, &bc1], vec![])?;
            let r = b.op("Div", &[&m_new, &den], vec![])?;
            let d = b.op("Mul", &[&r, &stepsize], vec![])?;
            let new_param = b.op("Sub", &[&p, &d], vec![])?;
            Ok(Update {
                new_param,
                state: vec![
                    StateSlot {
                        input: m.clone(),
                        output: m_new,
                    },
                    StateSlot {
                        input: v.clone(),
                        output: v_new,
                    },
                ],
            })
        }
        Optimizer::Sgd {
            momentum,
            weight_decay,
            nesterov,
        } => {
            let g = if weight_decay != 0.0 {
                let wd = b.scalar(weight_decay);
                let pw = b.op("Mul", &[param, &wd], vec![])?;
                b.op("Add", &[grad, &pw], vec![])?
            } else {
                grad.to_string()
            };
            let mut slots = Vec::new();
            let dir = if momentum != 0.0 {
                let buf = &state[0];
                let mu = b.scalar(momentum);
                let mb = b.op("Mul", &[buf, &mu], vec![])?;
                let nb = b.op("Add", &[&mb, &g], vec![])?;
                slots.push(StateSlot {
                    input: buf.clone(),
                    output: nb.clone(),
                });
                if nesterov {
                    let t = b.op("Mul", &[&nb, &mu], vec![])?;
                    b.op("Add", &[&g, &t], vec![])?
                } else {
                    nb
                }
            } else {
                g
            };
            let d = b.op("Mul", &[&dir, lr], vec![])?;
            let new_param = b.op("Sub", &[param, &d], vec![])?;
            Ok(Update {
                new_param,
                state: slots,
            })
        }
    }
}

/// Results of [`update_group`]: each parameter's new value (in the order given), the group's
/// state slots, and the state inputs it declared with their shapes (zero-initialised).
pub struct GroupUpdate {
    pub new_params: Vec<String>,
    pub state: Vec<StateSlot>,
    pub state_inputs: Vec<(String, Vec<usize>)>,
}

/// A member of an [`update_group`]: (parameter, gradient, shape).
pub type GroupMember<'a> = (&'a str, &'a str, &'a [usize]);

/// One update for a group of parameters that share the optimizer's settings: parameters and
/// gradients are flattened and concatenated, the optimizer's elementwise chain runs once for
/// the whole group (a handful of kernels instead of a handful per parameter: on a GPU each is
/// a launch), and the new vector is split back into the parameters' shapes. The group's state
/// is one flat tensor per slot, named after `group` ([`state_names`]). A one-parameter group
/// is the plain [`update`] (no copies). `params`: (parameter, gradient, shape).
pub fn update_group(
    b: &mut Builder,
    opt: &Optimizer,
    group: &str,
    params: &[GroupMember],
    lr: &str,
    step: &str,
) -> Result<GroupUpdate> {
    use crate::ir::{attr, Elem, Node};
    if params.len() == 1 {
        let (p, g, shape) = params[0];
        let snames = state_names(opt, p);
        for s in &snames {
            b.input(s, Elem::F32, shape)?;
        }
        let up = update(b, opt, p, g, lr, step, &snames)?;
        return Ok(GroupUpdate {
            new_params: vec![up.new_param],
            state: up.state,
            state_inputs: snames.into_iter().map(|s| (s, shape.to_vec())).collect(),
        });
    }
    let sizes: Vec<usize> = params.iter().map(|p| p.2.iter().product()).collect();
    let total: usize = sizes.iter().sum();
    let flat = |b: &mut Builder, names: Vec<&str>| {
        let parts = names
            .iter()
            .zip(&sizes)
            .map(|(x, &n)| b.reshape(x, &[n]))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        b.op("Concat", &refs, vec![attr::int("axis", 0)])
    };
    let p = flat(b, params.iter().map(|m| m.0).collect())?;
    let g = flat(b, params.iter().map(|m| m.1).collect())?;
    let snames = state_names(opt, group);
    for s in &snames {
        b.input(s, Elem::F32, &[total])?;
    }
    let up = update(b, opt, &p, &g, lr, step, &snames)?;
    let split = b.ints(&sizes.iter().map(|&n| n as i64).collect::<Vec<_>>());
    let name = b.fresh("Split");
    let outs: Vec<String> = (0..params.len())
        .map(|i| format!("{name}_out{i}"))
        .collect();
    b.add(Node {
        name,
        op: "Split".into(),
        domain: String::new(),
        inputs: vec![up.new_param, split],
        outputs: outs.clone(),
        attrs: vec![attr::int("axis", 0)],
    })?;
    let new_params = outs
        .iter()
        .zip(params)
        .map(|(o, p)| b.reshape(o, p.2))
        .collect::<Result<Vec<_>>>()?;
    Ok(GroupUpdate {
        new_params,
        state: up.state,
        state_inputs: snames.into_iter().map(|s| (s, vec![total])).collect(),
    })
}
