//! Convolutions: the window of a windowed op ([`ConvWindow`], shared with the pools), Conv
//! and ConvTranspose shapes, and Conv's gradient in the forms the engines run fast.

use fieldtune_tensor::Tensor;

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{attr, Elem, Node};

use super::entry::{def, dy, req, rule_all, vec_i64, Grad, Grads, OpDef};
use super::value::Value;

pub const OPS: &[OpDef] = &[
    def("Conv", conv, false, rule_all(conv_back)),
    def("ConvTranspose", conv, false, Grad::NoRule),
];

/// Explicit pads [begin..., end...] for a windowed op (Conv, pools) over spatial dims,
/// resolving `auto_pad`.
pub fn window_pads(
    node: &Node,
    spatial: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dil: &[usize],
) -> Result<Vec<usize>> {
    let n = spatial.len();
    let auto = node.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
    match auto.as_str() {
        "NOTSET" | "" => {
            let pads = node.ints("pads").unwrap_or_else(|| vec![0; 2 * n]);
            if pads.len() != 2 * n || pads.iter().any(|&p| !(0..=MAX_WINDOW as i64).contains(&p)) {
                return Err(GraphError::node(
                    node,
                    format!(
                        "pads {pads:?}: expected {} values of 0 to {MAX_WINDOW}",
                        2 * n
                    ),
                ));
            }
            Ok(pads.iter().map(|&p| p as usize).collect())
        }
        "VALID" => Ok(vec![0; 2 * n]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut pads = vec![0; 2 * n];
            for i in 0..n {
                let out = spatial[i].div_ceil(strides[i]);
                let eff = (kernel[i] - 1) * dil[i] + 1;
                let total = ((out - 1) * strides[i] + eff).saturating_sub(spatial[i]);
                let small = total / 2;
                let (b, e) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[i] = b;
                pads[i + n] = e;
            }
            Ok(pads)
        }
        other => Err(GraphError::node(
            node,
            format!("auto_pad '{other}' is not an ONNX value"),
        )),
    }
}

/// The largest kernel, stride, dilation or pad of a windowed op along one axis (2^20 cells):
/// far above any real model, small enough that the window arithmetic never overflows.
pub const MAX_WINDOW: usize = 1 << 20;

/// Kernel, strides, dilations and explicit pads of a 2-D windowed op.
#[derive(Clone, Debug)]
pub struct ConvWindow {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
}

impl ConvWindow {
    /// Reads the window attributes; `kernel` comes from the weight for Conv.
    pub fn of(node: &Node, spatial: &[usize], kernel: Vec<usize>) -> Result<ConvWindow> {
        let n = spatial.len();
        let get = |name: &str| -> Result<Vec<usize>> {
            match node.ints(name) {
                None => Ok(vec![1; n]),
                Some(v)
                    if v.len() == n && v.iter().all(|&x| (1..=MAX_WINDOW as i64).contains(&x)) =>
                {
                    Ok(v.iter().map(|&x| x as usize).collect())
                }
                Some(v) => Err(GraphError::node(
                    node,
                    format!("{name} {v:?}: expected {n} values of 1 to {MAX_WINDOW}"),
                )),
            }
        };
        let strides = get("strides")?;
        let dilations = get("dilations")?;
        if kernel.len() != n || kernel.iter().any(|&k| !(1..=MAX_WINDOW).contains(&k)) {
            return Err(GraphError::node(
                node,
                format!("kernel {kernel:?}: expected {n} sizes of 1 to {MAX_WINDOW}"),
            ));
        }
        let pads = window_pads(node, spatial, &kernel, &strides, &dilations)?;
        Ok(ConvWindow {
            kernel,
            strides,
            dilations,
            pads,
        })
    }

    /// The span of input cells one window covers along spatial axis `i`: `(k - 1) * d + 1`.
    pub fn extent(&self, i: usize) -> usize {
        (self.kernel[i] - 1) * self.dilations[i] + 1
    }

    /// Output spatial size (floor mode).
    pub fn output(&self, node: &Node, spatial: &[usize]) -> Result<Vec<usize>> {
        self.output_in_mode(node, spatial, false)
    }

    /// Output spatial size, in ceil mode when `ceil` (pooling's `ceil_mode`): the last window
    /// may run past the end. Where it would start in the end padding, PyTorch drops it, and
    /// ONNX Runtime's kernel does too while its graph-level shape inference does not: that
    /// case is refused, naming the node (without padding it needs a stride above the window's
    /// extent; the ceil-mode pools of SqueezeNet and GoogLeNet never hit it).
    pub fn output_in_mode(&self, node: &Node, spatial: &[usize], ceil: bool) -> Result<Vec<usize>> {
        let n = spatial.len();
        (0..n)
            .map(|i| {
                let padded = spatial[i] + self.pads[i] + self.pads[i + n];
                let eff = self.extent(i);
                if padded < eff {
                    return Err(GraphError::node(
                        node,
                        format!("window {eff} is larger than the padded input {padded}"),
                    ));
                }
                let s = self.strides[i];
                if !ceil {
                    return Ok((padded - eff) / s + 1);
                }
                let o = (padded - eff).div_ceil(s) + 1;
                if (o - 1) * s >= spatial[i] + self.pads[i] {
                    return Err(GraphError::node(
                        node,
                        format!(
                            "ceil_mode=1 with a last window that starts in the end padding (axis {i}: input {}, pads {}+{}, stride {s}); engines disagree on its output size, export with ceil_mode=False and explicit padding",
                            spatial[i],
                            self.pads[i],
                            self.pads[i + n]
                        ),
                    ));
                }
                Ok(o)
            })
            .collect()
    }
}

/// Conv and ConvTranspose over 4-D tensors (2-D convolutions).
fn conv(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let x = req(node, ins, 0)?;
    let w = req(node, ins, 1)?;
    if x.shape.len() != 4 || w.shape.len() != 4 {
        return Err(err(format!(
            "only 2-D convolutions (4-D tensors) are supported, got X {:?} W {:?}",
            x.shape, w.shape
        )));
    }
    let group = node.int("group", 1).max(1) as usize;
    let kernel = w.shape[2..].to_vec();
    let win = ConvWindow::of(node, &x.shape[2..], kernel)?;
    if node.op == "Conv" {
        if Some(x.shape[1]) != w.shape[1].checked_mul(group) || w.shape[0] % group != 0 {
            return Err(err(format!(
                "X {:?} and W {:?} do not fit group {group}",
                x.shape, w.shape
            )));
        }
        let sp = win.output(node, &x.shape[2..])?;
        Ok(vec![Value::new(
            Elem::F32,
            vec![x.shape[0], w.shape[0], sp[0], sp[1]],
        )])
    } else {
        if x.shape[1] != w.shape[0] {
            return Err(err(format!(
                "X {:?} and W {:?} channel mismatch",
                x.shape, w.shape
            )));
        }
        let op_pad = node.ints("output_padding").unwrap_or_else(|| vec![0, 0]);
        if node.ints("output_shape").is_some() {
            return Err(err(
                "output_shape is not supported; give pads and output_padding".into(),
            ));
        }
        let sp: Vec<usize> = (0..2)
            .map(|i| {
                let full =
                    win.strides[i] * (x.shape[2 + i] - 1) + op_pad[i] as usize + win.extent(i);
                full - win.pads[i] - win.pads[i + 2]
            })
            .collect();
        Ok(vec![Value::new(
            Elem::F32,
            vec![x.shape[0], w.shape[1] * group, sp[0], sp[1]],
        )])
    }
}

/// Output padding that makes a ConvTranspose over `out` reproduce the input size `input`.
pub(super) fn output_padding(win: &ConvWindow, input: &[usize], out: &[usize]) -> Vec<i64> {
    (0..2)
        .map(|i| {
            let base = win.strides[i] * (out[i] - 1) + win.extent(i);
            input[i] as i64 + win.pads[i] as i64 + win.pads[i + 2] as i64 - base as i64
        })
        .collect()
}

pub(super) fn window_attrs(win: &ConvWindow) -> Vec<crate::proto::AttributeProto> {
    vec![
        attr::ints("strides", &vec_i64(&win.strides)),
        attr::ints("dilations", &vec_i64(&win.dilations)),
        attr::ints("pads", &vec_i64(&win.pads)),
    ]
}

/// Conv: dX is a ConvTranspose of dY with the same weights (1x1: a MatMul by W^T; depthwise
/// at stride 1: a depthwise Conv with the flipped kernel); dW is a batched MatMul (1x1
/// and ungrouped: im2col columns) or a Conv of the regrouped input over the transposed
/// output gradient (grouped, depthwise included; tuned targets: the fieldtune-domain
/// `DepthwiseConvWgrad` for depthwise); dB sums dY over batch and space.
fn conv_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = &dy(n, gy)?;
    let mut out = vec![None; n.inputs.len()];
    let (x, w) = (n.inputs[0].clone(), n.inputs[1].clone());
    let (xs, ws, ys) = (b.shape(&x)?, b.shape(&w)?, b.shape(dy)?);
    let group = n.int("group", 1).max(1) as usize;
    let win = ConvWindow::of(n, &xs[2..], ws[2..].to_vec())?;
    let (nb, cg, m) = (xs[0], ws[1], ws[0]);
    let unit_steps = win.strides.iter().chain(&win.dilations).all(|&s| s == 1);
    let pointwise =
        group == 1 && ws[2] == 1 && ws[3] == 1 && unit_steps && win.pads.iter().all(|&p| p == 0);
    let depthwise_same = group == xs[1]
        && m == group
        && cg == 1
        && unit_steps
        && (0..4).all(|i| win.pads[i] < ws[2 + i % 2]);
    out[0] = Some(if pointwise {
        // dX[n] = W^T dY[n]: one broadcast MatMul (ConvTranspose adds a col2im pass).
        let hw = xs[2] * xs[3];
        let w2 = b.reshape(&w, &[m, cg])?;
        let wt = b.op("Transpose", &[&w2], vec![attr::ints("perm", &[1, 0])])?;
        let d3 = b.reshape(dy, &[nb, m, hw])?;
        let g = b.op("MatMul", &[&wt, &d3], vec![])?;
        b.reshape(&g, &xs)?
    } else if depthwise_same {
        // Stride 1: dX is the depthwise Conv of dY with the spatially flipped kernel and the
        // complementary pads, which runs on the engines' fast depthwise kernels.
        depthwise_input_grad_conv(b, dy, &w, &ws, &win)?
    } else {
        let opad = output_padding(&win, &xs[2..], &ys[2..]);
        let mut at = window_attrs(&win);
        at.push(attr::int("group", group as i64));
        at.push(attr::ints("output_padding", &opad));
        at.push(attr::ints("kernel_shape", &vec_i64(&ws[2..])));
        b.op("ConvTranspose", &[dy, &w], at)?
    });

    if pointwise {
        // 1x1 convolution: dW[m, c] = sum over batch and pixels of dY[n, m, p] * X[n, c, p],
        // one batched MatMul (a convolution with an image-sized kernel is a slow GEMV).
        let hw = xs[2] * xs[3];
        let x3 = b.reshape(&x, &[nb, cg, hw])?;
        let xt = b.op("Transpose", &[&x3], vec![attr::ints("perm", &[0, 2, 1])])?;
        let d3 = b.reshape(dy, &[nb, m, hw])?;
        let p = b.op("MatMul", &[&d3, &xt], vec![])?;
        let gw = b.reduce("ReduceSum", &p, &[0], false)?;
        out[1] = Some(b.reshape(&gw, &ws)?);
        if n.input(2).is_some() {
            out[2] = Some(b.reduce("ReduceSum", dy, &[0, 2, 3], false)?);
        }
        return Ok(out);
    }
    // Depthwise layers too take the regrouped Conv: per-tap sums (`depthwise_weight_grad_taps`)
    // win in isolation at stride 1 but not in a whole MobileNetV2 step, where they cost
    // tract far more peak memory (docs/BENCHMARKS.md section 3). Tuned targets run the
    // one-pass `DepthwiseConvWgrad` instead (multiplier 1 only; other grouped convolutions
    // keep the Conv).
    let depthwise = group == xs[1] && m == group && cg == 1;
    out[1] = Some(if group == 1 {
        conv_weight_grad_im2col(b, &x, dy, &xs, &ws, &ys, &win)?
    } else if depthwise && b.fieldtune_ops() {
        let mut at = window_attrs(&win);
        at.push(attr::ints("kernel_shape", &vec_i64(&ws[2..])));
        b.fused("DepthwiseConvWgrad", &[&x, dy], (None, 1), at)?
            .swap_remove(0)
    } else {
        grouped_weight_grad_conv(b, &x, dy, &xs, &ws, &ys, &win, group)?
    });
    if n.input(2).is_some() {
        out[2] = Some(b.reduce("ReduceSum", dy, &[0, 2, 3], false)?);
    }
    Ok(out)
}

/// Input gradient of a stride-1, dilation-1 depthwise convolution whose pads are smaller than
/// its kernel: a depthwise Conv of dY with the kernel flipped in both spatial axes (one MatMul
/// of the [C, kh*kw] weights by the reversal permutation) and pads `k - 1 - p` per side.
fn depthwise_input_grad_conv(
    b: &mut Builder,
    dy: &str,
    w: &str,
    ws: &[usize],
    win: &ConvWindow,
) -> Result<String> {
    let (c, kh, kw) = (ws[0], ws[2], ws[3]);
    let kk = kh * kw;
    let mut rev = vec![0f32; kk * kk];
    for i in 0..kk {
        rev[i * kk + (kk - 1 - i)] = 1.0;
    }
    let rev = b.constant(Tensor::f32(vec![kk, kk], rev).expect("sized"));
    let w2 = b.reshape(w, &[c, kk])?;
    let flipped = b.op("MatMul", &[&w2, &rev], vec![])?;
    let flipped = b.reshape(&flipped, ws)?;
    let p = &win.pads;
    let pads = [kh - 1 - p[0], kw - 1 - p[1], kh - 1 - p[2], kw - 1 - p[3]];
    b.op(
        "Conv",
        &[dy, &flipped],
        vec![
            attr::int("group", c as i64),
            attr::ints("pads", &vec_i64(&pads)),
            attr::ints("kernel_shape", &[kh as i64, kw as i64]),
        ],
    )
}

/// Weight gradient of a grouped convolution as one Conv of the regrouped input over the
/// transposed output gradient (strides and dilations swapped).
#[allow(clippy::too_many_arguments)]
pub fn grouped_weight_grad_conv(
    b: &mut Builder,
    x: &str,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
    win: &ConvWindow,
    group: usize,
) -> Result<String> {
    let (nb, cg, m) = (xs[0], ws[1], ws[0]);
    let mg = m / group;
    let (xin, wgt) = if group == 1 {
        let xt = b.op("Transpose", &[x], vec![attr::ints("perm", &[1, 0, 2, 3])])?;
        let dyt = b.op("Transpose", &[dy], vec![attr::ints("perm", &[1, 0, 2, 3])])?;
        (xt, dyt)
    } else {
        let x5 = b.reshape(x, &[nb, group, cg, xs[2], xs[3]])?;
        let xt = b.op(
            "Transpose",
            &[&x5],
            vec![attr::ints("perm", &[2, 1, 0, 3, 4])],
        )?;
        let xin = b.reshape(&xt, &[cg, group * nb, xs[2], xs[3]])?;
        let d5 = b.reshape(dy, &[nb, group, mg, ys[2], ys[3]])?;
        let dt = b.op(
            "Transpose",
            &[&d5],
            vec![attr::ints("perm", &[1, 2, 0, 3, 4])],
        )?;
        let wgt = b.reshape(&dt, &[m, nb, ys[2], ys[3]])?;
        (xin, wgt)
    };
    let gw = b.op(
        "Conv",
        &[&xin, &wgt],
        vec![
            attr::ints("strides", &vec_i64(&win.dilations)),
            attr::ints("dilations", &vec_i64(&win.strides)),
            attr::ints("pads", &vec_i64(&win.pads)),
            attr::int("group", group as i64),
            attr::ints("kernel_shape", &[ys[2] as i64, ys[3] as i64]),
        ],
    )?;
    let gwt = b.op("Transpose", &[&gw], vec![attr::ints("perm", &[1, 0, 2, 3])])?;
    let full = b.shape(&gwt)?;
    Ok(if full[2] != ws[2] || full[3] != ws[3] {
        let (s, e, a) = (
            b.ints(&[0, 0]),
            b.ints(&[ws[2] as i64, ws[3] as i64]),
            b.ints(&[2, 3]),
        );
        b.op("Slice", &[&gwt, &s, &e, &a], vec![])?
    } else {
        gwt
    })
}

/// The input cells that kernel offset `(i, j)` meets at every output position of a 2-D
/// window op: a strided slice of the (already padded) input `xp`, shaped like the output.
fn window_tap(
    b: &mut Builder,
    xp: &str,
    win: &ConvWindow,
    (i, j): (usize, usize),
    out: &[usize],
) -> Result<String> {
    let s0 = (i * win.dilations[0]) as i64;
    let s1 = (j * win.dilations[1]) as i64;
    let e0 = s0 + ((out[0] - 1) * win.strides[0]) as i64 + 1;
    let e1 = s1 + ((out[1] - 1) * win.strides[1]) as i64 + 1;
    let (st, en, ax, sp) = (
        b.ints(&[s0, s1]),
        b.ints(&[e0, e1]),
        b.ints(&[2, 3]),
        b.ints(&[win.strides[0] as i64, win.strides[1] as i64]),
    );
    b.op("Slice", &[xp, &st, &en, &ax, &sp], vec![])
}

/// Weight gradient of a depthwise convolution (one filter per channel) tap by tap: for
/// kernel offset `(i, j)`, `dW[c, 0, i, j]` = sum over batch and pixels of `dY` times the
/// strided slice of the padded input that offset meets. Not used by the train step (see
/// `conv_rule`); kept as the measured alternative of `cargo bench --bench rule_bench`.
pub fn depthwise_weight_grad_taps(
    b: &mut Builder,
    x: &str,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
    win: &ConvWindow,
) -> Result<String> {
    let xp = zero_pad(b, x, &win.pads)?;
    let mut taps = Vec::with_capacity(ws[2] * ws[3]);
    for i in 0..ws[2] {
        for j in 0..ws[3] {
            let sl = window_tap(b, &xp, win, (i, j), &ys[2..])?;
            let p = b.op("Mul", &[&sl, dy], vec![])?;
            // [1, C, 1, 1]
            taps.push(b.reduce("ReduceSum", &p, &[0, 2, 3], true)?);
        }
    }
    let refs: Vec<&str> = taps.iter().map(String::as_str).collect();
    let cat = if refs.len() == 1 {
        taps[0].clone()
    } else {
        b.op("Concat", &refs, vec![attr::int("axis", 2)])?
    };
    debug_assert_eq!(xs[1], ws[0]);
    b.reshape(&cat, ws)
}

/// `x` zero-padded by 2-D window pads `[top, left, bottom, right]` (itself when all are 0).
fn zero_pad(b: &mut Builder, x: &str, pd: &[usize]) -> Result<String> {
    if pd.iter().all(|&v| v == 0) {
        return Ok(x.to_string());
    }
    let pads = b.ints(&[
        0,
        0,
        pd[0] as i64,
        pd[1] as i64,
        0,
        0,
        pd[2] as i64,
        pd[3] as i64,
    ]);
    b.op("Pad", &[x, &pads], vec![])
}

/// Weight gradient of an ungrouped convolution as one batched MatMul over im2col columns:
/// for each kernel offset a strided slice of the padded input ([N, C, OH*OW]), stacked along
/// the channels, then dW[m, (k, c)] = sum over batch and pixels of dY[n, m, p] * cols[n, (k, c), p].
fn conv_weight_grad_im2col(
    b: &mut Builder,
    x: &str,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
    win: &ConvWindow,
) -> Result<String> {
    let (nb, c, m) = (xs[0], xs[1], ws[0]);
    let (kh, kw) = (ws[2], ws[3]);
    let p = ys[2] * ys[3];
    let xp = zero_pad(b, x, &win.pads)?;
    let mut cols = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            let sl = window_tap(b, &xp, win, (i, j), &ys[2..])?;
            cols.push(b.reshape(&sl, &[nb, c, p])?);
        }
    }
    let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
    let cols = if refs.len() == 1 {
        cols[0].clone()
    } else {
        b.op("Concat", &refs, vec![attr::int("axis", 1)])?
    };
    let kk = kh * kw;
    let ct = b.op("Transpose", &[&cols], vec![attr::ints("perm", &[0, 2, 1])])?;
    let d3 = b.reshape(dy, &[nb, m, p])?;
    let prod = b.op("MatMul", &[&d3, &ct], vec![])?;
    let sum = b.reduce("ReduceSum", &prod, &[0], false)?;
    let r = b.reshape(&sum, &[m, kk, c])?;
    let r = b.op("Transpose", &[&r], vec![attr::ints("perm", &[0, 2, 1])])?;
    b.reshape(&r, ws)
}
