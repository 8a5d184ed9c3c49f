//! The fieldtune-domain ops as tract ops, registered with tract's ONNX parser: one op type
//! whose [`Kind`] says which kernel of `fieldtune-kernels` it runs. The typed model keeps the
//! op as it is (no expansion), so tract's plan calls the one-pass kernel. Kernels run their
//! parallel work on the session's tract pool (the executor `TractSession::run` installs for
//! the run: a rayon pool of the engine's threads), single-threaded where it has none.

use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use fieldtune_kernels::{BnGradOut, BnTrainOut, DwWindow, Nc, Pool, Rayon, Serial};
use tract_linalg::multithread::{current_tract_executor, Executor};

/// `f` on the pool of the tract run in progress.
fn on_tract_pool<R>(f: impl FnOnce(&dyn Pool) -> R) -> R {
    match current_tract_executor() {
        Executor::SingleThread => f(&Serial),
        Executor::MultiThread(pool) => f(&Rayon(Some(&pool))),
        Executor::RayonGlobal => f(&Rayon(None)),
    }
}

/// Which kernel an [`FtOp`] runs, with its attributes.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    BatchNormTrain { eps: f32, momentum: f32 },
    BatchNormTrainGrad,
    ClipGrad { lo: f32, hi: f32 },
    MaxPoolGrad,
    DepthwiseConvWgrad(DwWindow),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::BatchNormTrain { .. } => "BatchNormTrain",
            Kind::BatchNormTrainGrad => "BatchNormTrainGrad",
            Kind::ClipGrad { .. } => "ClipGrad",
            Kind::MaxPoolGrad => "MaxPoolGrad",
            Kind::DepthwiseConvWgrad(_) => "DepthwiseConvWgrad",
        }
    }

    fn arity(&self) -> (usize, usize) {
        match self {
            Kind::BatchNormTrain { .. } => (5, 5),
            Kind::BatchNormTrainGrad => (5, 3),
            Kind::ClipGrad { .. } => (2, 1),
            Kind::MaxPoolGrad => (3, 1),
            Kind::DepthwiseConvWgrad(_) => (2, 1),
        }
    }

    /// The input the first output is shaped like: x for the forward, ClipGrad's dy, and x
    /// for the backwards (input 1 of BatchNormTrainGrad, 2 of MaxPoolGrad).
    fn data_input(&self) -> usize {
        match self {
            Kind::BatchNormTrainGrad => 1,
            Kind::MaxPoolGrad => 2,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct FtOp(Kind);

// tract compares ops for equality (DynEq); attributes read from a node are never NaN.
impl Eq for FtOp {}

fn attr(node: &NodeProto, name: &str) -> Option<f32> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}

fn bn_train(_: &ParsingContext, n: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k = Kind::BatchNormTrain {
        eps: attr(n, "epsilon").unwrap_or(1e-5),
        momentum: attr(n, "momentum").unwrap_or(0.9),
    };
    Ok((Box::new(FtOp(k)), vec![]))
}

fn bn_train_grad(
    _: &ParsingContext,
    _: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((Box::new(FtOp(Kind::BatchNormTrainGrad)), vec![]))
}

fn clip_grad(
    _: &ParsingContext,
    n: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let k = Kind::ClipGrad {
        lo: attr(n, "min").unwrap_or(f32::NEG_INFINITY),
        hi: attr(n, "max").unwrap_or(f32::INFINITY),
    };
    Ok((Box::new(FtOp(k)), vec![]))
}

fn max_pool_grad(
    _: &ParsingContext,
    _: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((Box::new(FtOp(Kind::MaxPoolGrad)), vec![]))
}

fn depthwise_conv_wgrad(
    _: &ParsingContext,
    n: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ints = |name: &str| {
        n.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.clone())
    };
    let win = super::dw_window(
        ints("kernel_shape"),
        ints("strides"),
        ints("dilations"),
        ints("pads"),
    )
    .map_err(|e| format_err!("DepthwiseConvWgrad node '{}': {e}", n.name))?;
    Ok((Box::new(FtOp(Kind::DepthwiseConvWgrad(win))), vec![]))
}

/// Registers the fieldtune-domain ops with tract's ONNX parser.
pub(crate) fn register(onnx: &mut Onnx) {
    onnx.op_register.insert("BatchNormTrain", bn_train);
    onnx.op_register.insert("BatchNormTrainGrad", bn_train_grad);
    onnx.op_register.insert("ClipGrad", clip_grad);
    onnx.op_register.insert("MaxPoolGrad", max_pool_grad);
    onnx.op_register
        .insert("DepthwiseConvWgrad", depthwise_conv_wgrad);
}

impl Op for FtOp {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    op_as_typed_op!();
}

fn nc(op: &str, shape: &[usize]) -> TractResult<Nc> {
    Nc::of(shape).ok_or_else(|| format_err!("{op}: input of shape {shape:?}: need [N, C, ...]"))
}

impl EvalOp for FtOp {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        on_tract_pool(|pool| self.eval_on(pool, inputs))
    }
}

impl FtOp {
    fn eval_on(&self, pool: &dyn Pool, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let op = self.0.name();
        let f = |i: usize| inputs[i].try_as_plain_ram()?.as_slice::<f32>();
        let kerr = |e: fieldtune_kernels::KernelError| format_err!("{op}: {e}");
        match self.0 {
            Kind::BatchNormTrain { eps, momentum } => {
                let shape = inputs[0].shape();
                let d = nc(op, shape)?;
                let mut y = Tensor::zero::<f32>(shape)?;
                let mut st: [Tensor; 4] = [
                    Tensor::zero::<f32>(&[d.c])?,
                    Tensor::zero::<f32>(&[d.c])?,
                    Tensor::zero::<f32>(&[d.c])?,
                    Tensor::zero::<f32>(&[d.c])?,
                ];
                let mut vy = y.try_as_plain_ram_mut()?;
                let [m, i, nm, nv] = &mut st;
                let (mut m, mut i) = (m.try_as_plain_ram_mut()?, i.try_as_plain_ram_mut()?);
                let (mut nm, mut nv) = (nm.try_as_plain_ram_mut()?, nv.try_as_plain_ram_mut()?);
                fieldtune_kernels::batch_norm_train(
                    pool,
                    f(0)?,
                    d,
                    f(1)?,
                    f(2)?,
                    f(3)?,
                    f(4)?,
                    eps,
                    momentum,
                    BnTrainOut {
                        y: vy.as_slice_mut::<f32>()?,
                        mean: m.as_slice_mut::<f32>()?,
                        inv_std: i.as_slice_mut::<f32>()?,
                        new_running_mean: nm.as_slice_mut::<f32>()?,
                        new_running_var: nv.as_slice_mut::<f32>()?,
                    },
                )
                .map_err(kerr)?;
                let [m, i, nm, nv] = st;
                Ok(tvec!(
                    y.into_tvalue(),
                    m.into_tvalue(),
                    i.into_tvalue(),
                    nm.into_tvalue(),
                    nv.into_tvalue()
                ))
            }
            Kind::BatchNormTrainGrad => {
                let shape = inputs[1].shape();
                let d = nc(op, shape)?;
                let mut dx = Tensor::zero::<f32>(shape)?;
                let mut ds = Tensor::zero::<f32>(&[d.c])?;
                let mut db = Tensor::zero::<f32>(&[d.c])?;
                let (mut vx, mut vs) = (dx.try_as_plain_ram_mut()?, ds.try_as_plain_ram_mut()?);
                let mut vb = db.try_as_plain_ram_mut()?;
                fieldtune_kernels::batch_norm_train_grad(
                    pool,
                    f(0)?,
                    f(1)?,
                    d,
                    f(2)?,
                    f(3)?,
                    f(4)?,
                    BnGradOut {
                        dx: vx.as_slice_mut::<f32>()?,
                        dscale: vs.as_slice_mut::<f32>()?,
                        dbias: vb.as_slice_mut::<f32>()?,
                    },
                )
                .map_err(kerr)?;
                Ok(tvec!(dx.into_tvalue(), ds.into_tvalue(), db.into_tvalue()))
            }
            Kind::ClipGrad { lo, hi } => {
                let mut dx = Tensor::zero::<f32>(inputs[0].shape())?;
                let mut v = dx.try_as_plain_ram_mut()?;
                fieldtune_kernels::clip_grad(pool, f(0)?, f(1)?, lo, hi, v.as_slice_mut::<f32>()?)
                    .map_err(kerr)?;
                Ok(tvec!(dx.into_tvalue()))
            }
            Kind::MaxPoolGrad => {
                let (ys, xs) = (inputs[0].shape(), inputs[2].shape());
                let (yd, d) = (nc(op, ys)?, nc(op, xs)?);
                let mut dx = Tensor::zero::<f32>(xs)?;
                let mut v = dx.try_as_plain_ram_mut()?;
                let idx = inputs[1].try_as_plain_ram()?;
                fieldtune_kernels::max_pool_grad(
                    pool,
                    f(0)?,
                    idx.as_slice::<i64>()?,
                    d,
                    yd.s,
                    v.as_slice_mut::<f32>()?,
                )
                .map_err(kerr)?;
                Ok(tvec!(dx.into_tvalue()))
            }
            Kind::DepthwiseConvWgrad(win) => {
                let d = super::dw_shape(inputs[0].shape(), inputs[1].shape())
                    .map_err(|e| format_err!("{op}: {e}"))?;
                let mut dw = Tensor::zero::<f32>(&[d.c, 1, win.kernel[0], win.kernel[1]])?;
                let mut v = dw.try_as_plain_ram_mut()?;
                fieldtune_kernels::depthwise_conv_wgrad(
                    pool,
                    f(0)?,
                    f(1)?,
                    d,
                    win,
                    v.as_slice_mut::<f32>()?,
                )
                .map_err(kerr)?;
                Ok(tvec!(dw.into_tvalue()))
            }
        }
    }
}

impl TypedOp for FtOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let f32_of = |shape: &ShapeFact| f32::fact(shape.clone());
        Ok(match self.0 {
            Kind::BatchNormTrain { .. } => {
                let c = inputs[0].shape[1].clone();
                let mut v = tvec!(f32_of(&inputs[0].shape));
                v.extend((0..4).map(|_| f32::fact([c.clone()])));
                v
            }
            Kind::BatchNormTrainGrad => {
                let c = inputs[1].shape[1].clone();
                tvec!(
                    f32_of(&inputs[1].shape),
                    f32::fact([c.clone()]),
                    f32::fact([c])
                )
            }
            Kind::ClipGrad { .. } => tvec!(f32_of(&inputs[0].shape)),
            Kind::MaxPoolGrad => tvec!(f32_of(&inputs[2].shape)),
            Kind::DepthwiseConvWgrad(win) => {
                let c = inputs[0].shape[1].clone();
                let [kh, kw] = win.kernel.map(|k| TDim::from(k as i64));
                tvec!(f32::fact([c, 1.into(), kh, kw]))
            }
        })
    }

    as_op!();
}

impl InferenceRulesOp for FtOp {
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        let (ni, no) = self.0.arity();
        check_input_arity(inputs, ni)?;
        check_output_arity(outputs, no)?;
        for o in outputs {
            s.equals(&o.datum_type, f32::datum_type())?;
        }
        if let Kind::DepthwiseConvWgrad(win) = self.0 {
            // dW is [C, 1, KH, KW], C from x.
            s.equals(&outputs[0].rank, 4)?;
            s.equals(&outputs[0].shape[0], &inputs[0].shape[1])?;
            s.equals(&outputs[0].shape[1], 1.to_dim())?;
            s.equals(&outputs[0].shape[2], (win.kernel[0] as i64).to_dim())?;
            s.equals(&outputs[0].shape[3], (win.kernel[1] as i64).to_dim())?;
            return Ok(());
        }
        let data = self.0.data_input();
        s.equals(&outputs[0].shape, &inputs[data].shape)?;
        for o in &outputs[1..] {
            s.equals(&o.rank, 1)?;
            s.equals(&o.shape[0], &inputs[data].shape[1])?;
        }
        Ok(())
    }

    fn to_typed(
        &self,
        _source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &std::collections::HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        let inputs = node.inputs.iter().map(|o| mapping[o]).collect::<TVec<_>>();
        target.wire_node(&node.name, self.clone(), &inputs)
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.arity().1)
    }

    as_op!();
}
