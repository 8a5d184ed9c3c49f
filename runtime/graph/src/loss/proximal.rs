//! FedProx's proximal term (Li et al. 2020), `mu/2 * ||w - w0||^2` over the trained model
//! parameters, where `w0` is each parameter's value in the model the step is compiled from
//! (in a fleet round: the server's arrays). It is applied as its exact gradient
//! `mu * (w - w0)`, added to each parameter's gradient before the optimizer, so a parameter
//! that no other term reaches stays frozen. `w0` is a constant of the graph
//! (`<param>.prox_anchor`). The term's value is added to `loss` and reported as `proximal`.
//! Pretext heads are left out: they are not part of the model.

use fieldtune_tensor::Tensor;

use super::blocks::{sum_all, LossTerms};
use crate::builder::Builder;
use crate::error::Result;

pub(crate) struct ProximalStep {
    mu: f32,
    mu_name: String,
    /// `||w - w0||^2` of each parameter so far.
    squares: Vec<String>,
}

impl ProximalStep {
    /// The term with weight `mu`; none when `mu` is 0.
    pub fn new(b: &mut Builder, mu: f32) -> Option<ProximalStep> {
        (mu != 0.0).then(|| ProximalStep {
            mu,
            mu_name: b.scalar(mu),
            squares: Vec::new(),
        })
    }

    /// `grad + mu * (w - w0)` for the parameter input `name` whose model value is `w0`.
    pub fn grad(&mut self, b: &mut Builder, name: &str, w0: &Tensor, grad: &str) -> Result<String> {
        let anchor = b.initializer(&format!("{name}.prox_anchor"), w0.clone())?;
        let d = b.op("Sub", &[name, &anchor], vec![])?;
        let dd = b.op("Mul", &[&d, &d], vec![])?;
        self.squares.push(sum_all(b, &dd)?);
        let md = b.op("Mul", &[&d, &self.mu_name], vec![])?;
        b.op("Add", &[grad, &md], vec![])
    }

    /// Adds `mu/2 * sum of the squares` to the total and reports it as `proximal`.
    pub fn finish(self, b: &mut Builder, loss: &mut LossTerms) -> Result<()> {
        let Some((first, rest)) = self.squares.split_first() else {
            return Ok(());
        };
        let mut s = first.clone();
        for t in rest {
            s = b.op("Add", &[&s, t], vec![])?;
        }
        let half = b.scalar(self.mu / 2.0);
        let term = b.op("Mul", &[&s, &half], vec![])?;
        loss.total = b.op("Add", &[loss.total.as_str(), &term], vec![])?;
        loss.metrics.push(("proximal", term));
        Ok(())
    }
}
