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
