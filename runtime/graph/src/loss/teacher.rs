//! The mean teacher ([`MeanTeacher`]): `teacher.<name>` copies of the trainable parameters,
//! looped as state, give the weak-view targets (and CoTTA's augmented-view targets) and
//! follow the student after every step: `teacher = ema * teacher + (1 - ema) * student`.

use std::collections::HashMap;

use fieldtune_tensor::Tensor;

use super::blocks::Loops;
use crate::builder::Builder;
use crate::error::Result;
use crate::forward::Forward;
use crate::ir::Elem;
use crate::spec::{next_name, teacher_name, MeanTeacher};

/// The mean teacher's part of a train step.
pub(crate) struct TeacherStep {
    cfg: MeanTeacher,
    /// Teacher copies not looped yet, with their initial values (the student's).
    copies: Vec<(String, Tensor)>,
    /// Parameter -> its teacher copy, for the teacher's forward passes.
    subst: HashMap<String, String>,
    /// The EMA's (ema, 1 - ema) constants, from [`TeacherStep::begin_update`].
    weights: Option<(String, String)>,
}

impl TeacherStep {
    /// Declares a `teacher.<name>` input for each parameter.
    pub fn new(b: &mut Builder, cfg: MeanTeacher, params: &[(String, Tensor)]) -> Result<Self> {
        let mut copies = Vec::new();
        let mut subst = HashMap::new();
        for (name, t) in params {
            let tn = teacher_name(name);
            b.input(&tn, Elem::F32, t.shape())?;
            copies.push((tn.clone(), t.clone()));
            subst.insert(name.clone(), tn);
        }
        Ok(TeacherStep {
            cfg,
            copies,
            subst,
            weights: None,
        })
    }

    /// Parameter -> teacher copy: what a teacher pass reads instead of the student.
    pub fn subst(&self) -> &HashMap<String, String> {
        &self.subst
    }

    /// The teacher's logits on `x`, without gradients (the weak-view target).
    pub fn predict(&self, b: &mut Builder, fwd: &Forward<'_>, x: &str) -> Result<String> {
        let lt = fwd.pass(b, x, "teacher", None, Some(&self.subst), None)?;
        b.stop_gradient(&lt)
    }

    /// Adds the EMA's constants; call once, before the parameters' updates.
    pub fn begin_update(&mut self, b: &mut Builder) {
        self.weights = Some((b.scalar(self.cfg.ema), b.scalar(1.0 - self.cfg.ema)));
    }

    /// `param` gets no gradient: the teacher still reads its copy, which loops unchanged.
    pub fn keep(&mut self, param: &str, loops: &mut Loops) {
        let tn = teacher_name(param);
        if let Some(pos) = self.copies.iter().position(|(n, _)| n == &tn) {
            loops.updates.push((next_name(&tn), tn.clone()));
            loops.state.push(self.copies.swap_remove(pos));
        }
    }

    /// The teacher copy of `param` follows its `updated` value.
    pub fn follow(
        &mut self,
        b: &mut Builder,
        param: &str,
        updated: &str,
        loops: &mut Loops,
    ) -> Result<()> {
        let tn = teacher_name(param);
        if let (Some((keep, take)), Some(pos)) = (
            &self.weights,
            self.copies.iter().position(|(n, _)| n == &tn),
        ) {
            let a = b.op("Mul", &[&tn, keep], vec![])?;
            let c = b.op("Mul", &[updated, take], vec![])?;
            let nt = b.op("Add", &[&a, &c], vec![])?;
            loops.updates.push((next_name(&tn), nt));
            loops.state.push(self.copies.swap_remove(pos));
        }
        Ok(())
    }
}
