//! The fieldtune-domain ops as ONNX Runtime custom operators (CPU provider). Each kernel
//! reads its inputs in place, asks ONNX Runtime for its outputs and runs the
//! `fieldtune-kernels` function on them: no copies, no other allocation.

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::value::TensorElementType::Float32;

use fieldtune_kernels::{BnGradOut, BnTrainOut, Nc};

use super::DOMAIN;

fn fail(op: &str, what: impl std::fmt::Display) -> ort::Error {
    ort::Error::new(format!("{DOMAIN}:{op}: {what}"))
}

fn dims(op: &str, shape: &[i64]) -> ort::Result<Nc> {
    let s: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    Nc::of(&s).ok_or_else(|| fail(op, format!("input of shape {shape:?}: need [N, C, ...]")))
}

macro_rules! input {
    ($ctx:expr, $op:expr, $i:expr) => {{
        let v = $ctx
            .input($i)?
            .ok_or_else(|| fail($op, format!("input {} is missing", $i)))?;
        v
    }};
}

macro_rules! output {
    ($ctx:expr, $op:expr, $i:expr, $shape:expr) => {{
        let v = $ctx
            .output($i, $shape)?
            .ok_or_else(|| fail($op, format!("output {} is missing", $i)))?;
        v
    }};
}

/// A custom operator of `$ins` and `$outs` f32 tensors named after its type, whose kernel
/// `$make` builds from the node's attributes (`$kctx`).
macro_rules! operator {
    ($ty:ident, $ins:expr, $outs:expr, |$kctx:ident| $make:block) => {
        struct $ty;

        impl Operator for $ty {
            type Kernel<'attr> = BoxedKernel<'attr>;

            fn name(&self) -> &str {
                stringify!($ty)
            }

            fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
                [(); $ins].map(|_| OperatorInput::required(Float32))
            }

            fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
                [(); $outs].map(|_| OperatorOutput::required(Float32))
            }

            fn create_kernel<'attr>(
                &self,
                $kctx: &KernelContext<'attr>,
            ) -> ort::Result<Self::Kernel<'attr>> {
                $make
            }
        }
    };
}

operator!(BatchNormTrain, 5, 5, |kctx| {
    let eps = kctx.get::<f32>("epsilon").unwrap_or(1e-5);
    let momentum = kctx.get::<f32>("momentum").unwrap_or(0.9);
    Ok(Box::new(move |ctx: &ComputeContext| {
        const OP: &str = "BatchNormTrain";
        let (x, sc, bi, rm, rv) = (
            input!(ctx, OP, 0),
            input!(ctx, OP, 1),
            input!(ctx, OP, 2),
            input!(ctx, OP, 3),
            input!(ctx, OP, 4),
        );
        let (shape, x) = x.try_extract_tensor::<f32>()?;
        let d = dims(OP, shape)?;
        let c = [d.c as i64];
        let mut y = output!(ctx, OP, 0, shape.to_vec());
        let mut o1 = output!(ctx, OP, 1, c.to_vec());
        let mut o2 = output!(ctx, OP, 2, c.to_vec());
        let mut o3 = output!(ctx, OP, 3, c.to_vec());
        let mut o4 = output!(ctx, OP, 4, c.to_vec());
        fieldtune_kernels::batch_norm_train(
            x,
            d,
            sc.try_extract_tensor::<f32>()?.1,
            bi.try_extract_tensor::<f32>()?.1,
            rm.try_extract_tensor::<f32>()?.1,
            rv.try_extract_tensor::<f32>()?.1,
            eps,
            momentum,
            BnTrainOut {
                y: y.try_extract_tensor_mut::<f32>()?.1,
                mean: o1.try_extract_tensor_mut::<f32>()?.1,
                inv_std: o2.try_extract_tensor_mut::<f32>()?.1,
                new_running_mean: o3.try_extract_tensor_mut::<f32>()?.1,
                new_running_var: o4.try_extract_tensor_mut::<f32>()?.1,
            },
        )
        .map_err(|e| fail(OP, e))
    }))
});

operator!(BatchNormTrainGrad, 5, 3, |_kctx| {
    Ok(Box::new(|ctx: &ComputeContext| {
        const OP: &str = "BatchNormTrainGrad";
        let (dy, x, sc, mean, inv) = (
            input!(ctx, OP, 0),
            input!(ctx, OP, 1),
            input!(ctx, OP, 2),
            input!(ctx, OP, 3),
            input!(ctx, OP, 4),
        );
        let (shape, x) = x.try_extract_tensor::<f32>()?;
        let d = dims(OP, shape)?;
        let c = vec![d.c as i64];
        let mut dx = output!(ctx, OP, 0, shape.to_vec());
        let mut ds = output!(ctx, OP, 1, c.clone());
        let mut db = output!(ctx, OP, 2, c);
        fieldtune_kernels::batch_norm_train_grad(
            dy.try_extract_tensor::<f32>()?.1,
            x,
            d,
            sc.try_extract_tensor::<f32>()?.1,
            mean.try_extract_tensor::<f32>()?.1,
            inv.try_extract_tensor::<f32>()?.1,
            BnGradOut {
                dx: dx.try_extract_tensor_mut::<f32>()?.1,
                dscale: ds.try_extract_tensor_mut::<f32>()?.1,
                dbias: db.try_extract_tensor_mut::<f32>()?.1,
            },
        )
        .map_err(|e| fail(OP, e))
    }))
});

operator!(ClipGrad, 2, 1, |kctx| {
    let lo = kctx.get::<f32>("min").unwrap_or(f32::NEG_INFINITY);
    let hi = kctx.get::<f32>("max").unwrap_or(f32::INFINITY);
    Ok(Box::new(move |ctx: &ComputeContext| {
        const OP: &str = "ClipGrad";
        let (dy, y) = (input!(ctx, OP, 0), input!(ctx, OP, 1));
        let (shape, dy) = dy.try_extract_tensor::<f32>()?;
        let mut dx = output!(ctx, OP, 0, shape.to_vec());
        fieldtune_kernels::clip_grad(
            dy,
            y.try_extract_tensor::<f32>()?.1,
            lo,
            hi,
            dx.try_extract_tensor_mut::<f32>()?.1,
        )
        .map_err(|e| fail(OP, e))
    }))
});

/// The [`DOMAIN`] domain with every fieldtune op, for one session.
pub(crate) fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(BatchNormTrain)?
        .add(BatchNormTrainGrad)?
        .add(ClipGrad)
}
