//! The fieldtune-domain ops as ONNX Runtime custom operators (CPU provider). Each kernel
//! reads its inputs in place, asks ONNX Runtime for its outputs and runs the
//! `fieldtune-kernels` function on them, no copies, with its parallel work on the session's
//! own intra-op thread pool ([`IntraOp`]: the kernel context's ParallelFor), never on a
//! second pool beside it.

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::value::TensorElementType::{Float32, Int64};
use ort::AsPointer;
use std::ffi::c_void;

use fieldtune_kernels::{BnGradOut, BnTrainOut, Nc, Pool};

use super::{dw_shape, dw_window, DOMAIN};

fn fail(op: &str, what: impl std::fmt::Display) -> ort::Error {
    ort::Error::new(format!("{DOMAIN}:{op}: {what}"))
}

fn dims(op: &str, shape: &[i64]) -> ort::Result<Nc> {
    let s: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    Nc::of(&s).ok_or_else(|| fail(op, format!("input of shape {shape:?}: need [N, C, ...]")))
}

/// ONNX Runtime's intra-op thread pool of the session running the kernel, through
/// `KernelContext_ParallelFor` (ONNX Runtime runs the tasks on the calling thread when the
/// session has no pool). `threads` is the session's intra-op thread count.
struct IntraOp<'a> {
    ctx: &'a ComputeContext,
    threads: usize,
}

impl Pool for IntraOp<'_> {
    fn threads(&self) -> usize {
        self.threads
    }

    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks < 2 || self.threads < 2 || !parallel_for(self.ctx, tasks, f) {
            (0..tasks).for_each(f);
        }
    }
}

/// Runs one task of [`parallel_for`]: `data` points at its `&(dyn Fn(usize) + Sync)`.
extern "C" fn run_task(data: *mut c_void, i: usize) {
    #[allow(unsafe_code)]
    // SAFETY: `parallel_for` passes a pointer to its task reference, which outlives the
    // ParallelFor call that runs this; the closure is Sync, so calls from several threads
    // at once are sound.
    let f = unsafe { &*(data as *const &(dyn Fn(usize) + Sync)) };
    f(i)
}

/// `f(0..tasks)` on the session's intra-op pool through `KernelContext_ParallelFor`, which
/// returns once every task has run; false (nothing run) where ONNX Runtime refuses. The
/// `ort` crate's `par_for` would box a `'static` closure per call; the kernels' tasks
/// borrow their inputs and outputs, so this calls the C API with a borrowed closure.
#[allow(unsafe_code)]
fn parallel_for(ctx: &ComputeContext, tasks: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
    let data = &f as *const &(dyn Fn(usize) + Sync) as *mut c_void;
    let api = ort::api();
    // SAFETY: `ctx` is the live kernel context of this compute call; `data` stays valid
    // until ParallelFor returns (it blocks until all tasks are done); `run_task` matches
    // the callback's signature. A failed status is released here.
    unsafe {
        let status = (api.KernelContext_ParallelFor)(ctx.ptr(), run_task, tasks, 0, data);
        if status.0.is_null() {
            true
        } else {
            (api.ReleaseStatus)(status.0);
            false
        }
    }
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

/// A custom operator of inputs of the element types `$ins` and `$outs` f32 outputs, named
/// after its type, whose kernel
/// `$make` builds from the node's attributes (`$kctx`) and the session's intra-op thread
/// count (`$threads`).
macro_rules! operator {
    ($ty:ident, $ins:expr, $outs:expr, |$kctx:ident, $threads:ident| $make:block) => {
        /// The operator, with the session's intra-op thread count.
        struct $ty(usize);

        impl Operator for $ty {
            type Kernel<'attr> = BoxedKernel<'attr>;

            fn name(&self) -> &str {
                stringify!($ty)
            }

            fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
                $ins.map(OperatorInput::required)
            }

            fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
                [(); $outs].map(|_| OperatorOutput::required(Float32))
            }

            fn create_kernel<'attr>(
                &self,
                $kctx: &KernelContext<'attr>,
            ) -> ort::Result<Self::Kernel<'attr>> {
                let $threads = self.0;
                $make
            }
        }
    };
}

operator!(BatchNormTrain, [Float32; 5], 5, |kctx, threads| {
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
            &IntraOp { ctx, threads },
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

operator!(BatchNormTrainGrad, [Float32; 5], 3, |_kctx, threads| {
    Ok(Box::new(move |ctx: &ComputeContext| {
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
            &IntraOp { ctx, threads },
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

operator!(ClipGrad, [Float32; 2], 1, |kctx, threads| {
    let lo = kctx.get::<f32>("min").unwrap_or(f32::NEG_INFINITY);
    let hi = kctx.get::<f32>("max").unwrap_or(f32::INFINITY);
    Ok(Box::new(move |ctx: &ComputeContext| {
        const OP: &str = "ClipGrad";
        let (dy, y) = (input!(ctx, OP, 0), input!(ctx, OP, 1));
        let (shape, dy) = dy.try_extract_tensor::<f32>()?;
        let mut dx = output!(ctx, OP, 0, shape.to_vec());
        fieldtune_kernels::clip_grad(
            &IntraOp { ctx, threads },
            dy,
            y.try_extract_tensor::<f32>()?.1,
            lo,
            hi,
            dx.try_extract_tensor_mut::<f32>()?.1,
        )
        .map_err(|e| fail(OP, e))
    }))
});

operator!(
    MaxPoolGrad,
    [Float32, Int64, Float32],
    1,
    |_kctx, threads| {
        Ok(Box::new(move |ctx: &ComputeContext| {
            const OP: &str = "MaxPoolGrad";
            let (dy, idx, x) = (input!(ctx, OP, 0), input!(ctx, OP, 1), input!(ctx, OP, 2));
            let (yshape, dy) = dy.try_extract_tensor::<f32>()?;
            // x is read for its shape only.
            let xshape = x.try_extract_tensor::<f32>()?.0;
            let (d, yd) = (dims(OP, xshape)?, dims(OP, yshape)?);
            let mut dx = output!(ctx, OP, 0, xshape.to_vec());
            fieldtune_kernels::max_pool_grad(
                &IntraOp { ctx, threads },
                dy,
                idx.try_extract_tensor::<i64>()?.1,
                d,
                yd.s,
                dx.try_extract_tensor_mut::<f32>()?.1,
            )
            .map_err(|e| fail(OP, e))
        }))
    }
);

operator!(DepthwiseConvWgrad, [Float32; 2], 1, |kctx, threads| {
    const OP: &str = "DepthwiseConvWgrad";
    let win = dw_window(
        kctx.get::<Vec<i64>>("kernel_shape"),
        kctx.get::<Vec<i64>>("strides"),
        kctx.get::<Vec<i64>>("dilations"),
        kctx.get::<Vec<i64>>("pads"),
    )
    .map_err(|e| fail(OP, e))?;
    Ok(Box::new(move |ctx: &ComputeContext| {
        let (x, dy) = (input!(ctx, OP, 0), input!(ctx, OP, 1));
        let (xs, x) = x.try_extract_tensor::<f32>()?;
        let (ys, dy) = dy.try_extract_tensor::<f32>()?;
        let u = |s: &[i64]| s.iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>();
        let d = dw_shape(&u(xs), &u(ys)).map_err(|e| fail(OP, e))?;
        let shape = vec![d.c as i64, 1, win.kernel[0] as i64, win.kernel[1] as i64];
        let mut dw = output!(ctx, OP, 0, shape);
        fieldtune_kernels::depthwise_conv_wgrad(
            &IntraOp { ctx, threads },
            x,
            dy,
            d,
            win,
            dw.try_extract_tensor_mut::<f32>()?.1,
        )
        .map_err(|e| fail(OP, e))
    }))
});

/// The [`DOMAIN`] domain with every fieldtune op, for one session of `threads` intra-op
/// threads.
pub(crate) fn domain(threads: usize) -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(BatchNormTrain(threads))?
        .add(BatchNormTrainGrad(threads))?
        .add(ClipGrad(threads))?
        .add(MaxPoolGrad(threads))?
        .add(DepthwiseConvWgrad(threads))
}
