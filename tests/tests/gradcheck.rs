//! Every autodiff rule against central finite differences, on random shapes, on both
//! engines (ONNX Runtime and tract).

use fieldtune_graph::autodiff::backward;
use fieldtune_graph::builder::Builder;
use fieldtune_graph::ir::{attr, encode_model, Elem};
use fieldtune_graph::FeatureDistance;
use fieldtune_tensor::Tensor;
use fieldtune_tests::{away_from_zero, conv_attrs, distinct, engines, gradcheck, rng, uniform};
use rand::Rng;

const TOL: f64 = 1e-2;
const FLOOR: f64 = 5e-2;

/// Runs `case(seed)` -> (inputs, eps, build) on both engines for three seeds.
fn check<F>(label: &str, case: F)
where
    F: Fn(
        u64,
    ) -> (
        Vec<(String, Tensor)>,
        f32,
        Box<dyn Fn(&mut Builder, &[String]) -> fieldtune_graph::Result<String>>,
    ),
{
    check_on(engines(), label, case)
}

/// [`check`] on the given engines only (for forms one engine cannot load).
fn check_on<F>(engines: Vec<Box<dyn fieldtune_engine::Engine>>, label: &str, case: F)
where
    F: Fn(
        u64,
    ) -> (
        Vec<(String, Tensor)>,
        f32,
        Box<dyn Fn(&mut Builder, &[String]) -> fieldtune_graph::Result<String>>,
    ),
{
    for engine in engines {
        for seed in 0..3u64 {
            let (inputs, eps, build) = case(seed);
            let refs: Vec<(&str, Tensor)> = inputs
                .iter()
                .map(|(n, t)| (n.as_str(), t.clone()))
                .collect();
            let r = gradcheck(engine.as_ref(), &refs, eps, seed + 100, |b, n| build(b, n));
            let worst = r.worst(FLOOR);
            assert!(
                worst < TOL,
                "{label} on {:?}, seed {seed}: analytic vs numeric directional derivatives differ by {worst:.3e} (rows {:?})",
                engine.kind(),
                r.rows
            );
        }
    }
}

fn dims(seed: u64, lo: usize, hi: usize, n: usize) -> Vec<usize> {
    let mut r = rng(seed * 7919 + 1);
    (0..n).map(|_| r.gen_range(lo..=hi)).collect()
}

#[test]
fn conv_pads_strides_dilations_groups() {
    // (groups, stride, dilation, pads[t,l,b,r], kernel)
    let configs: [(usize, usize, usize, [i64; 4], usize); 10] = [
        (1, 1, 1, [0, 0, 0, 0], 1), // pointwise (its own gradient forms)
        (1, 1, 1, [1, 1, 1, 1], 3),
        (1, 1, 1, [2, 0, 0, 1], 3), // uneven pads
        (1, 2, 1, [0, 1, 1, 0], 3),
        (1, 2, 2, [2, 2, 2, 2], 3),
        (2, 1, 1, [0, 0, 0, 0], 2),
        (3, 3, 1, [1, 0, 2, 1], 3),
        (4, 1, 1, [1, 1, 1, 1], 3), // depthwise (channels = groups = 4): flipped-kernel dX
        (4, 1, 1, [0, 2, 1, 0], 3), // depthwise, uneven pads
        (4, 2, 1, [1, 1, 1, 1], 3), // depthwise, stride 2 (ConvTranspose dX)
    ];
    for (ci, &(g, s, d, pads, k)) in configs.iter().enumerate() {
        check(&format!("Conv config {ci}"), move |seed| {
            let mut r = rng(seed + 10 * ci as u64);
            let dd = dims(seed + ci as u64, 5, 9, 3);
            let (n, hw) = (dd[0] % 3 + 1, dd[1] + 2);
            let cin = g * (dd[2] % 2 + 1);
            let cin = if ci >= 7 { 4 } else { cin };
            let m = if ci >= 7 { 4 } else { g * (dd[1] % 3 + 1) };
            let x = uniform(&mut r, &[n, cin, hw, hw + 1], -1.0, 1.0);
            let w = uniform(&mut r, &[m, cin / g, k, k], -1.0, 1.0);
            let bias = uniform(&mut r, &[m], -1.0, 1.0);
            let inputs = vec![("x".into(), x), ("w".into(), w), ("b".into(), bias)];
            let build = move |b: &mut Builder, n: &[String]| {
                b.op(
                    "Conv",
                    &[&n[0], &n[1], &n[2]],
                    conv_attrs(g, s, d, pads, [k, k]),
                )
            };
            (inputs, 1e-2, Box::new(build))
        });
    }
}

/// Depthwise convolution configs of the tuned weight gradient: (stride, dilation,
/// pads[t,l,b,r], kernel [kh, kw]); the channel count is the group.
const DEPTHWISE: [(usize, usize, [i64; 4], [usize; 2]); 6] = [
    (1, 1, [1, 1, 1, 1], [3, 3]),
    (2, 1, [1, 1, 1, 1], [3, 3]),
    (1, 1, [2, 2, 2, 2], [5, 5]),
    (1, 2, [2, 2, 2, 2], [3, 3]),
    (2, 1, [0, 2, 1, 0], [3, 5]), // uneven pads, non-square kernel
    (3, 1, [1, 0, 2, 1], [3, 3]),
];

/// The tuned step's fieldtune-domain `DepthwiseConvWgrad` (one-pass depthwise weight
/// gradient) under finite differences on both engines: strides, pads, dilations, 5x5 and
/// odd sizes.
#[test]
fn tuned_depthwise_conv_weight_grad() {
    for (ci, &(s, d, pads, k)) in DEPTHWISE.iter().enumerate() {
        check(
            &format!("depthwise Conv config {ci} (tuned)"),
            move |seed| {
                let mut r = rng(seed + 30 * ci as u64);
                let dd = dims(seed + ci as u64, 5, 9, 3);
                let (n, c, h, w) = (dd[0] % 3 + 1, dd[1] % 4 + 2, dd[2] + 2, dd[0] + 4);
                let x = uniform(&mut r, &[n, c, h, w], -1.0, 1.0);
                let wt = uniform(&mut r, &[c, 1, k[0], k[1]], -1.0, 1.0);
                let inputs = vec![("x".into(), x), ("w".into(), wt)];
                let build = move |b: &mut Builder, nm: &[String]| {
                    b.set_fieldtune_ops(true);
                    b.op("Conv", &[&nm[0], &nm[1]], conv_attrs(c, s, d, pads, k))
                };
                // The loss is linear in x and in w (each alone): central differences are
                // exact at any step, and a larger one keeps the float32 rounding of the loss
                // out of them.
                (inputs, 1e-1, Box::new(build))
            },
        );
    }
}

#[test]
fn relu() {
    check("Relu", |seed| {
        let mut r = rng(seed);
        let x = away_from_zero(&mut r, &dims(seed, 2, 6, 3), 0.05);
        (
            vec![("x".into(), x)],
            1e-2,
            Box::new(|b: &mut Builder, n: &[String]| b.op("Relu", &[&n[0]], vec![])),
        )
    });
}

#[test]
fn maxpool_disjoint_and_overlapping() {
    maxpool_cases(false);
}

/// The tuned step's fieldtune-domain `MaxPoolGrad` (one-pass scatter from the forward's
/// indices, each engine's index convention) under finite differences on both engines, on
/// disjoint and overlapping windows, and with tied maxima.
#[test]
fn tuned_maxpool_grad() {
    maxpool_cases(true);
    maxpool_ties(true);
}

fn maxpool_cases(tuned: bool) {
    // (kernel, stride, pads)
    let configs: [(i64, i64, [i64; 4]); 4] = [
        (2, 2, [0, 0, 0, 0]),
        (3, 3, [0, 0, 0, 0]),
        (3, 2, [1, 1, 1, 1]),
        (3, 1, [0, 1, 0, 1]),
    ];
    for (ci, &(k, s, pads)) in configs.iter().enumerate() {
        check(
            &format!("MaxPool config {ci} (tuned: {tuned})"),
            move |seed| {
                let mut r = rng(seed + ci as u64);
                let d = dims(seed, 4, 9, 2);
                let x = distinct(&mut r, &[2, d[0] % 3 + 1, d[0], d[1]], 20.0);
                let build = move |b: &mut Builder, n: &[String]| {
                    b.set_fieldtune_ops(tuned);
                    b.op(
                        "MaxPool",
                        &[&n[0]],
                        vec![
                            attr::ints("kernel_shape", &[k, k]),
                            attr::ints("strides", &[s, s]),
                            attr::ints("pads", &pads),
                        ],
                    )
                };
                // Values are spaced at least 20/486 apart: perturbations stay well inside that.
                (vec![("x".into(), x)], 5e-3, Box::new(build))
            },
        );
    }
}

/// Tied maxima (where finite differences say nothing): like PyTorch, the whole gradient goes
/// to the first maximum of each window in row-major order, on both engines, on overlapping
/// windows too.
#[test]
fn maxpool_ties_go_to_the_first_maximum() {
    maxpool_ties(false);
}

fn maxpool_ties(tuned: bool) {
    // One 2x5 plane per (n, c): [[1, 3, 3, 0, 3], [3, 3, 3, 2, 3]]; 2x2 windows at stride 1.
    let plane = [1f32, 3., 3., 0., 3., 3., 3., 3., 2., 3.];
    let x = Tensor::f32(vec![2, 2, 2, 5], plane.repeat(4)).expect("sized");
    // First maximum per window (row-major): (0,1), (0,1), (0,2), (0,4).
    let want_plane = [0f32, 2., 1., 0., 1., 0., 0., 0., 0., 0.];
    for engine in engines() {
        let mut b = Builder::new(17);
        b.set_fieldtune_ops(tuned);
        let xn = b.input("x", Elem::F32, x.shape()).expect("input");
        let y = b
            .op(
                "MaxPool",
                &[&xn],
                vec![
                    attr::ints("kernel_shape", &[2, 2]),
                    attr::ints("strides", &[1, 1]),
                ],
            )
            .expect("pool");
        let loss = b
            .reduce("ReduceSum", &y, &[0, 1, 2, 3], false)
            .expect("sum");
        let g = backward(&mut b, &loss, &["x".to_string()]).expect("backward")["x"]
            .clone()
            .expect("gradient");
        b.output_as(&g, "grad").expect("out");
        let graph = b.finish("ties");
        let fused = graph.nodes.iter().filter(|n| n.op == "MaxPoolGrad").count();
        assert_eq!(
            fused,
            usize::from(tuned),
            "MaxPoolGrad nodes (tuned: {tuned})"
        );
        let bytes = encode_model(&graph.to_model("ties"));
        let mut s = engine.load(&bytes, "ties").expect("load");
        let out = s.run(&[("x", &x)]).expect("run");
        let got = out[0].1.as_f32().expect("f32");
        assert_eq!(
            got,
            &want_plane.repeat(4)[..],
            "{:?} (tuned: {tuned})",
            engine.kind()
        );
    }
}

#[test]
fn flatten_and_reshape() {
    check("Flatten+Reshape", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 5, 4);
        let x = uniform(&mut r, &d, -1.0, 1.0);
        let build = move |b: &mut Builder, n: &[String]| {
            let f = b.op("Flatten", &[&n[0]], vec![attr::int("axis", 2)])?;
            let s = b.ints(&[-1, d[3] as i64]);
            let y = b.op("Reshape", &[&f, &s], vec![])?;
            b.op("Mul", &[&y, &y], vec![])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
}

#[test]
fn gemm_all_transposes_alpha_beta() {
    for ta in 0..2i64 {
        for tb in 0..2i64 {
            check(&format!("Gemm transA={ta} transB={tb}"), move |seed| {
                let mut r = rng(seed);
                let d = dims(seed, 2, 7, 3);
                let (m, k, n) = (d[0], d[1], d[2]);
                let a = uniform(&mut r, &if ta == 1 { [k, m] } else { [m, k] }, -1.0, 1.0);
                let w = uniform(&mut r, &if tb == 1 { [n, k] } else { [k, n] }, -1.0, 1.0);
                let c = uniform(&mut r, &[n], -1.0, 1.0); // broadcast over rows
                let build = move |b: &mut Builder, x: &[String]| {
                    b.op(
                        "Gemm",
                        &[&x[0], &x[1], &x[2]],
                        vec![
                            attr::int("transA", ta),
                            attr::int("transB", tb),
                            attr::float("alpha", 0.7),
                            attr::float("beta", 1.3),
                        ],
                    )
                };
                (
                    vec![("a".into(), a), ("w".into(), w), ("c".into(), c)],
                    1e-2,
                    Box::new(build),
                )
            });
        }
    }
}

#[test]
fn matmul_2d_and_batched_broadcast() {
    check("MatMul", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 5, 4);
        let a = uniform(&mut r, &[d[0], d[1], d[2]], -1.0, 1.0);
        let w = uniform(&mut r, &[d[2], d[3]], -1.0, 1.0); // broadcast over the batch
        (
            vec![("a".into(), a), ("w".into(), w)],
            1e-2,
            Box::new(|b: &mut Builder, x: &[String]| b.op("MatMul", &[&x[0], &x[1]], vec![])),
        )
    });
}

/// Two-operand Einsum as exporters emit it for attention (MaxViT): a batched product with
/// the contracted letter last in both operands, then one contracting the middle letter.
#[test]
fn einsum_batched_attention_forms() {
    check("Einsum", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 4, 3);
        let q = uniform(&mut r, &[2, d[0], d[1], d[2]], -1.0, 1.0);
        let k = uniform(&mut r, &[2, d[0], 3, d[2]], -1.0, 1.0);
        let build = |b: &mut Builder, x: &[String]| {
            let eq = |e: &str| vec![attr::string("equation", e)];
            let s = b.op("Einsum", &[&x[0], &x[1]], eq("b g i d, b g j d -> b g i j"))?;
            b.op("Einsum", &[&s, &x[1]], eq("BGIJ,BGJD->BGID"))
        };
        (
            vec![("q".into(), q), ("k".into(), k)],
            1e-2,
            Box::new(build),
        )
    });
}

/// MaxViT's two Einsums exactly as torchvision writes them (5-D, upper case, spaces), then
/// the batched-matmul pair `bhid,bhjd->bhij` and `bhij,bhjd->bhid`, with separate q, k, v.
#[test]
fn einsum_maxvit_and_batched_matmul_equations() {
    check("Einsum (MaxViT, bhid)", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 4, 4);
        let shape = [1, d[0], 2, d[1], d[2]];
        let q = uniform(&mut r, &shape, -1.0, 1.0);
        let k = uniform(&mut r, &shape, -1.0, 1.0);
        let v = uniform(&mut r, &shape, -1.0, 1.0);
        let build = |b: &mut Builder, x: &[String]| {
            let eq = |e: &str| vec![attr::string("equation", e)];
            let s = b.op(
                "Einsum",
                &[&x[0], &x[1]],
                eq("B G H I D, B G H J D -> B G H I J"),
            )?;
            let o = b.op(
                "Einsum",
                &[&s, &x[2]],
                eq("B G H I J, B G H J D -> B G H I D"),
            )?;
            // The same pair on 4-D tensors (G and H merged by a Reshape).
            let sh = b.shape(&o)?;
            let to = [sh[0], sh[1] * sh[2], sh[3], sh[4]];
            let (o4, k4) = (b.reshape(&o, &to)?, b.reshape(&x[1], &to)?);
            let s4 = b.op("Einsum", &[&o4, &k4], eq("bhid,bhjd->bhij"))?;
            b.op("Einsum", &[&s4, &k4], eq("bhij,bhjd->bhid"))
        };
        (
            vec![("q".into(), q), ("k".into(), k), ("v".into(), v)],
            1e-2,
            Box::new(build),
        )
    });
}

/// The other forms: a letter summed out of one operand alone (`ij,jk->i`: k; its gradient
/// enters its gradient as an operand of ones), `...` (engines get it spelled in letters:
/// tract 0.23.9 computes `...j,jk->...k` wrongly), an implicit output, three operands and
/// one operand (a transpose with a sum).
#[test]
fn einsum_sums_ellipsis_implicit_and_operand_counts() {
    check("Einsum (forms)", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 4, 3);
        let a = uniform(&mut r, &[2, d[0], d[1]], -1.0, 1.0);
        let m = uniform(&mut r, &[d[1], d[2]], -1.0, 1.0);
        let c = uniform(&mut r, &[d[2], 3], -1.0, 1.0);
        let build = |b: &mut Builder, x: &[String]| {
            let eq = |e: &str| vec![attr::string("equation", e)];
            let lonely = b.op("Einsum", &[&x[0], &x[1]], eq("bij,jk->bi"))?;
            let dots = b.op("Einsum", &[&x[0], &x[1]], eq("...j,jk->...k"))?;
            let implicit = b.op("Einsum", &[&dots, &x[2]], eq("bik,kz"))?;
            let three = b.op("Einsum", &[&x[0], &x[1], &x[2]], eq("bij,jk,kz->zb"))?;
            let one = b.op("Einsum", &[&x[0]], eq("bij->jb"))?;
            let t = b.op("Einsum", &[&three, &one], eq("zy,jb->b"))?;
            let u = b.op("Einsum", &[&lonely, &implicit], eq("bi,biz->bz"))?;
            let ax = b.ints(&[1]);
            let t = b.op("Unsqueeze", &[&t, &ax], vec![])?;
            b.op("Mul", &[&u, &t], vec![])
        };
        (
            vec![("a".into(), a), ("m".into(), m), ("c".into(), c)],
            1e-2,
            Box::new(build),
        )
    });
}

/// Pad whose pads the graph computes from the input's shape, as Swin's window padding is
/// exported (Shape, Gather, Mod, Sub, Concat): folded to a constant; its gradient is a
/// Slice of dY.
#[test]
fn pad_with_computed_pads() {
    check("Pad (computed pads)", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 3, 6, 2);
        let x = uniform(&mut r, &[1, d[0], d[1], 2], -1.0, 1.0);
        let build = |b: &mut Builder, n: &[String]| {
            let shape = b.op("Shape", &[&n[0]], vec![])?;
            let win = b.ints(&[4]);
            let mut ends = Vec::new();
            for axis in [1i64, 2] {
                let i = b.ints(&[axis]);
                let g = b.op("Gather", &[&shape, &i], vec![])?;
                let m = b.op("Mod", &[&g, &win], vec![])?;
                let s = b.op("Sub", &[&win, &m], vec![])?;
                ends.push(b.op("Mod", &[&s, &win], vec![])?);
            }
            let (z5, z1) = (b.ints(&[0, 1, 0, 0, 0]), b.ints(&[0]));
            let pads = b.op(
                "Concat",
                &[&z5, &ends[0], &ends[1], &z1],
                vec![attr::int("axis", 0)],
            )?;
            let y = b.op("Pad", &[&n[0], &pads], vec![])?;
            b.op("Mul", &[&y, &y], vec![])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
}

/// A crop by negative pads, whose gradient pads the sliced dY with zeros, on ONNX Runtime
/// only: tract 0.23.9's Pad overflows on negative pads (the forward fails there too).
#[test]
fn pad_with_negative_pads_on_onnx_runtime() {
    check_on(
        vec![Box::new(fieldtune_tests::ort())],
        "Pad (crop)",
        |seed| {
            let mut r = rng(seed);
            let d = dims(seed, 3, 6, 2);
            let x = uniform(&mut r, &[2, d[0], d[1]], -1.0, 1.0);
            let build = |b: &mut Builder, n: &[String]| {
                let crop = b.ints(&[0, -1, 1, 0, 0, -2]);
                let y = b.op("Pad", &[&n[0], &crop], vec![])?;
                b.op("Mul", &[&y, &y], vec![])
            };
            (vec![("x".into(), x)], 1e-2, Box::new(build))
        },
    );
}

#[test]
fn add_sub_mul_div_broadcasting() {
    for op in ["Add", "Sub", "Mul", "Div"] {
        check(op, move |seed| {
            let mut r = rng(seed);
            let d = dims(seed, 2, 5, 3);
            let a = uniform(&mut r, &[d[0], d[1], d[2]], -1.0, 1.0);
            // Second operand broadcasts on two axes; for Div keep it away from zero.
            let c = if op == "Div" {
                uniform(&mut r, &[d[1], 1], 0.5, 1.5)
            } else {
                uniform(&mut r, &[d[1], 1], -1.0, 1.0)
            };
            let build = move |b: &mut Builder, x: &[String]| {
                let y = b.op(op, &[&x[0], &x[1]], vec![])?;
                // Then with the broadcast operand first (for Div, second: y may be near 0).
                if op == "Div" {
                    b.op(op, &[&y, &x[1]], vec![])
                } else {
                    b.op(op, &[&x[1], &y], vec![])
                }
            };
            (
                vec![("a".into(), a), ("c".into(), c)],
                1e-3,
                Box::new(build),
            )
        });
    }
}

#[test]
fn softmax_and_logsoftmax() {
    for op in ["Softmax", "LogSoftmax"] {
        for axis in [-1i64, 1] {
            check(&format!("{op} axis {axis}"), move |seed| {
                let mut r = rng(seed);
                let d = dims(seed, 2, 6, 3);
                let x = uniform(&mut r, &d, -2.0, 2.0);
                (
                    vec![("x".into(), x)],
                    1e-2,
                    Box::new(move |b: &mut Builder, n: &[String]| {
                        b.op(op, &[&n[0]], vec![attr::int("axis", axis)])
                    }),
                )
            });
        }
    }
}

#[test]
fn reduce_sum_and_mean() {
    for op in ["ReduceSum", "ReduceMean"] {
        for keep in [false, true] {
            check(&format!("{op} keepdims={keep}"), move |seed| {
                let mut r = rng(seed);
                let d = dims(seed, 2, 5, 3);
                let x = uniform(&mut r, &d, -1.0, 1.0);
                let build = move |b: &mut Builder, n: &[String]| {
                    let sq = b.op("Mul", &[&n[0], &n[0]], vec![])?;
                    b.reduce(op, &sq, &[0, 2], keep)
                };
                (vec![("x".into(), x)], 1e-2, Box::new(build))
            });
        }
    }
}

#[test]
fn elementwise_loss_ops() {
    for op in [
        "Exp",
        "Log",
        "Neg",
        "Sqrt",
        "Sigmoid",
        "Tanh",
        "Identity",
        "Reciprocal",
        "Erf",
    ] {
        check(op, move |seed| {
            let mut r = rng(seed);
            let x = uniform(&mut r, &dims(seed, 2, 5, 2), 0.3, 1.5);
            (
                vec![("x".into(), x)],
                1e-3,
                Box::new(move |b: &mut Builder, n: &[String]| b.op(op, &[&n[0]], vec![])),
            )
        });
    }
}

/// Strided slices (Swin's patch merging takes `x[:, 0::2, 1::2, :]`): steps 2 and 3 on two
/// axes, with an end that leaves a remainder.
#[test]
fn slice_with_steps() {
    check("Slice (steps)", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 4, 2);
        let x = uniform(&mut r, &[2, 2 * d[0] + 1, 3 * d[1] + 2, 3], -1.0, 1.0);
        let build = move |b: &mut Builder, n: &[String]| {
            let (s, e, ax, st) = (
                b.ints(&[0, 1]),
                b.ints(&[(2 * d[0]) as i64, i64::MAX]),
                b.ints(&[1, 2]),
                b.ints(&[2, 3]),
            );
            b.op("Slice", &[&n[0], &s, &e, &ax, &st], vec![])
        };
        (vec![("x".into(), x)], 1e-3, Box::new(build))
    });
}

#[test]
fn concat_slice_transpose_where() {
    check("Concat/Slice/Transpose/Where", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 5, 2);
        let a = uniform(&mut r, &[d[0], d[1]], -1.0, 1.0);
        let c = uniform(&mut r, &[d[0] + 1, d[1]], -1.0, 1.0);
        let build = move |b: &mut Builder, x: &[String]| {
            let cat = b.op("Concat", &[&x[0], &x[1]], vec![attr::int("axis", 0)])?;
            let (s, e, ax) = (b.ints(&[1]), b.ints(&[(2 * d[0]) as i64]), b.ints(&[0]));
            let sl = b.op("Slice", &[&cat, &s, &e, &ax], vec![])?;
            let t = b.op("Transpose", &[&sl], vec![attr::ints("perm", &[1, 0])])?;
            let zero = b.scalar(0.0);
            let pos = b.op("Greater", &[&t, &zero], vec![])?;
            let sq = b.op("Mul", &[&t, &t], vec![])?;
            b.op("Where", &[&pos, &t, &sq], vec![])
        };
        (
            vec![("a".into(), a), ("c".into(), c)],
            1e-3,
            Box::new(build),
        )
    });
}

#[test]
fn unsqueeze_squeeze_expand_pad() {
    check("Unsqueeze/Squeeze/Expand/Pad", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 5, 2);
        let x = uniform(&mut r, &[d[0], 1, d[1]], -1.0, 1.0);
        let build = move |b: &mut Builder, n: &[String]| {
            let ax = b.ints(&[1]);
            let sq = b.op("Squeeze", &[&n[0], &ax], vec![])?;
            let ax0 = b.ints(&[0]);
            let un = b.op("Unsqueeze", &[&sq, &ax0], vec![])?;
            let shape = b.ints(&[3, d[0] as i64, d[1] as i64]);
            let ex = b.op("Expand", &[&un, &shape], vec![])?;
            let pads = b.ints(&[0, 1, 2, 1, 0, 1]);
            let y = b.op("Pad", &[&ex, &pads], vec![])?;
            b.op("Mul", &[&y, &y], vec![])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
}

#[test]
fn sum_cast_and_inference_dropout() {
    check("Sum/Cast/Dropout", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 5, 2);
        let a = uniform(&mut r, &[d[0], d[1]], -1.0, 1.0);
        let c = uniform(&mut r, &[d[1]], -1.0, 1.0);
        let e = uniform(&mut r, &[d[0], 1], -1.0, 1.0);
        let build = |b: &mut Builder, n: &[String]| {
            let s = b.op("Sum", &[&n[0], &n[1], &n[2]], vec![])?;
            let f = b.op("Cast", &[&s], vec![attr::int("to", 1)])?;
            let y = b.op("Dropout", &[&f], vec![])?;
            b.op("Mul", &[&y, &n[0]], vec![])
        };
        (
            vec![("a".into(), a), ("c".into(), c), ("e".into(), e)],
            1e-2,
            Box::new(build),
        )
    });
}

/// Gather along each axis with fed 2-D indices that repeat and count from the end (their
/// gradients add up), and with constant indices.
#[test]
fn gather_repeated_and_negative_indices() {
    for axis in [0i64, 1, -1] {
        check(&format!("Gather axis {axis}"), move |seed| {
            let mut r = rng(seed + 90);
            let d = dims(seed, 3, 5, 3);
            let x = uniform(&mut r, &d, -1.0, 1.0);
            let len = d[if axis < 0 { 2 } else { axis as usize }] as i64;
            let idx = Tensor::i64(vec![2, 3], vec![0, len - 1, -1, 1, 0, -len]).expect("sized");
            let build = move |b: &mut Builder, n: &[String]| {
                b.op("Gather", &[&n[0], &n[1]], vec![attr::int("axis", axis)])
            };
            (
                vec![("x".into(), x), ("i".into(), idx)],
                1e-2,
                Box::new(build),
            )
        });
    }
    check("Gather constant indices", |seed| {
        let mut r = rng(seed + 91);
        let d = dims(seed, 3, 5, 2);
        let x = uniform(&mut r, &d, -1.0, 1.0);
        let build = |b: &mut Builder, n: &[String]| {
            let i = b.constant(Tensor::i64(vec![4], vec![2, 0, 2, 1]).expect("sized"));
            let g = b.op("Gather", &[&n[0], &i], vec![attr::int("axis", 1)])?;
            b.op("Mul", &[&g, &g], vec![])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
}

#[test]
fn reduce_max_and_min() {
    for op in ["ReduceMax", "ReduceMin"] {
        for (axes, keep) in [(vec![1i64], false), (vec![0, 2], true), (vec![-1], true)] {
            check(
                &format!("{op} axes {axes:?} keepdims={keep}"),
                move |seed| {
                    let mut r = rng(seed + 95);
                    let d = dims(seed, 2, 5, 3);
                    // Distinct values 20/n apart: the extreme never ties within a perturbation.
                    let x = distinct(&mut r, &d, 20.0);
                    let axes = axes.clone();
                    let build =
                        move |b: &mut Builder, n: &[String]| b.reduce(op, &n[0], &axes, keep);
                    (vec![("x".into(), x)], 5e-3, Box::new(build))
                },
            );
        }
    }
}

/// Tied extremes (where finite differences say nothing): the gradient is split evenly
/// between them, as PyTorch's `amax`/`amin` do, on both engines.
#[test]
fn reduce_max_ties_split_the_gradient() {
    // Rows [3, 1, 3, 3], [2, 5, 0, 5]: the max of row 0 ties three times, of row 1 twice.
    let x = Tensor::f32(vec![2, 4], vec![3., 1., 3., 3., 2., 5., 0., 5.]).expect("sized");
    let third = 1.0 / 3.0;
    let want = [third, 0., third, third, 0., 0.5, 0., 0.5];
    for engine in engines() {
        let mut b = Builder::new(17);
        let xn = b.input("x", Elem::F32, x.shape()).expect("input");
        let y = b.reduce("ReduceMax", &xn, &[1], false).expect("max");
        let loss = b.reduce("ReduceSum", &y, &[0], false).expect("sum");
        let g = backward(&mut b, &loss, &["x".to_string()]).expect("backward")["x"]
            .clone()
            .expect("gradient");
        b.output_as(&g, "grad").expect("out");
        let bytes = encode_model(&b.finish("ties").to_model("ties"));
        let mut s = engine.load(&bytes, "ties").expect("load");
        let out = s.run(&[("x", &x)]).expect("run");
        let got = out[0].1.as_f32().expect("f32");
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{:?}: {got:?}",
            engine.kind()
        );
    }
}

/// The ops whose gradient rules the cases in this file check by finite differences. The
/// next test compares it with the op table: a new rule needs a case here.
const COVERED: &[&str] = &[
    "Add",
    "Abs",
    "AveragePool",
    "Cast",
    "Clip",
    "Concat",
    "Conv",
    "Div",
    "Dropout",
    "Einsum",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
];

#[test]
fn every_differentiable_op_has_a_finite_difference_case() {
    let table = fieldtune_graph::ops::differentiable();
    let missing: Vec<&str> = table
        .iter()
        .copied()
        .filter(|op| !COVERED.contains(op))
        .collect();
    let stale: Vec<&str> = COVERED
        .iter()
        .copied()
        .filter(|op| !table.contains(op))
        .collect();
    assert!(
        missing.is_empty(),
        "ops with a gradient rule but no finite-difference case in gradcheck.rs: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "COVERED lists ops without a gradient rule in the op table: {stale:?}"
    );
}

#[test]
fn unsupported_op_on_the_gradient_path_is_refused_by_name() {
    let mut b = Builder::new(17);
    let x = b
        .input("x", fieldtune_graph::ir::Elem::F32, &[2, 3, 2, 2])
        .unwrap();
    let y = b.op("GlobalMaxPool", &[&x], vec![]).unwrap();
    let l = b.reduce("ReduceSum", &y, &[0, 1, 2, 3], false).unwrap();
    let err = fieldtune_graph::autodiff::backward(&mut b, &l, &["x".into()]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("GlobalMaxPool") && msg.contains("no gradient rule"),
        "{msg}"
    );
}

/// Uniform values in [lo, hi) kept at least `gap` away from every point in `kinks`.
fn avoiding(seed: u64, shape: &[usize], lo: f32, hi: f32, kinks: &[f32], gap: f32) -> Tensor {
    let mut r = rng(seed * 31 + 7);
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| loop {
            let x = r.gen_range(lo..hi);
            if kinks.iter().all(|k| (x - k).abs() >= gap) {
                break x;
            }
        })
        .collect();
    Tensor::f32(shape.to_vec(), v).expect("sized")
}

#[test]
fn clip_relu6_and_leaky_relu() {
    check("Clip (ReLU6, min/max inputs)", |seed| {
        let x = avoiding(seed, &dims(seed, 2, 6, 3), -2.0, 8.0, &[0.0, 6.0], 0.05);
        let build = |b: &mut Builder, n: &[String]| {
            let (lo, hi) = (b.scalar(0.0), b.scalar(6.0));
            b.op("Clip", &[&n[0], &lo, &hi], vec![])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
    check("Clip (max only)", |seed| {
        let x = avoiding(seed, &dims(seed, 2, 6, 2), -2.0, 2.0, &[0.5], 0.05);
        let build = |b: &mut Builder, n: &[String]| {
            let hi = b.scalar(0.5);
            b.op("Clip", &[&n[0], "", &hi], vec![])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
    check("LeakyRelu", |seed| {
        let mut r = rng(seed);
        let x = away_from_zero(&mut r, &dims(seed, 2, 6, 3), 0.05);
        let build = |b: &mut Builder, n: &[String]| {
            b.op("LeakyRelu", &[&n[0]], vec![attr::float("alpha", 0.1)])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
}

#[test]
fn hard_sigmoid_and_hard_swish() {
    check("HardSigmoid (PyTorch's alpha 1/6)", |seed| {
        let x = avoiding(seed, &dims(seed, 2, 6, 3), -5.0, 5.0, &[-3.0, 3.0], 0.05);
        let build = |b: &mut Builder, n: &[String]| {
            b.op(
                "HardSigmoid",
                &[&n[0]],
                vec![attr::float("alpha", 1.0 / 6.0), attr::float("beta", 0.5)],
            )
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
    check("HardSigmoid (ONNX default alpha 0.2)", |seed| {
        let x = avoiding(seed, &dims(seed, 2, 6, 2), -4.0, 4.0, &[-2.5, 2.5], 0.05);
        let build = |b: &mut Builder, n: &[String]| b.op("HardSigmoid", &[&n[0]], vec![]);
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
    check("HardSwish", |seed| {
        let x = avoiding(seed, &dims(seed, 2, 6, 3), -5.0, 5.0, &[-3.0, 3.0], 0.05);
        let build = |b: &mut Builder, n: &[String]| b.op("HardSwish", &[&n[0]], vec![]);
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
}

#[test]
fn global_and_windowed_average_pool() {
    check("GlobalAveragePool", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 6, 3);
        let x = uniform(&mut r, &[2, d[0], d[1], d[2]], -1.0, 1.0);
        let build = |b: &mut Builder, n: &[String]| b.op("GlobalAveragePool", &[&n[0]], vec![]);
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
    // (kernel, stride, pads, count_include_pad)
    let configs: [(i64, i64, [i64; 4], i64); 4] = [
        (2, 2, [0, 0, 0, 0], 0),
        (3, 1, [1, 1, 1, 1], 0),
        (3, 2, [1, 0, 1, 1], 1),
        (3, 2, [0, 1, 1, 0], 0),
    ];
    for (ci, &(k, s, pads, cip)) in configs.iter().enumerate() {
        check(&format!("AveragePool config {ci}"), move |seed| {
            let mut r = rng(seed + 50 * ci as u64);
            let d = dims(seed + ci as u64, 5, 9, 2);
            let x = uniform(&mut r, &[2, 3, d[0], d[1]], -1.0, 1.0);
            let build = move |b: &mut Builder, n: &[String]| {
                b.op(
                    "AveragePool",
                    &[&n[0]],
                    vec![
                        attr::ints("kernel_shape", &[k, k]),
                        attr::ints("strides", &[s, s]),
                        attr::ints("pads", &pads),
                        attr::int("count_include_pad", cip),
                    ],
                )
            };
            (vec![("x".into(), x)], 1e-2, Box::new(build))
        });
    }
}

#[test]
fn split_equal_and_sized() {
    check("Split (sizes input, one output unused)", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 4, 2);
        let x = uniform(&mut r, &[d[0], 7, d[1]], -1.0, 1.0);
        let build = |b: &mut Builder, n: &[String]| {
            let sizes = b.ints(&[2, 4, 1]);
            let parts: Vec<String> = (0..3).map(|i| format!("part{i}")).collect();
            b.add(fieldtune_graph::ir::Node {
                name: "split".into(),
                op: "Split".into(),
                domain: String::new(),
                inputs: vec![n[0].clone(), sizes],
                outputs: parts.clone(),
                attrs: vec![attr::int("axis", 1)],
            })?;
            // Reordered and partly unused: the rule must route each part back in place.
            b.op(
                "Concat",
                &[&parts[2], &parts[0]],
                vec![attr::int("axis", 1)],
            )
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
}

#[test]
fn batch_norm_train_and_frozen() {
    batch_norm_cases(false);
}

/// Tuned steps' fieldtune-domain ops (one-pass kernels) under finite differences on both
/// engines: BatchNormTrain with its BatchNormTrainGrad, and ClipGrad for Relu and Clip.
#[test]
fn tuned_ops_batch_norm_train_and_clip_grad() {
    batch_norm_cases(true);
    let tuned = |b: &mut Builder| b.set_fieldtune_ops(true);
    check("Relu (tuned: ClipGrad)", |seed| {
        let mut r = rng(seed);
        let x = away_from_zero(&mut r, &dims(seed, 2, 6, 3), 0.05);
        let build = move |b: &mut Builder, n: &[String]| {
            tuned(b);
            b.op("Relu", &[&n[0]], vec![])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
    check("Clip ReLU6 (tuned: ClipGrad)", |seed| {
        let x = avoiding(seed, &dims(seed, 2, 6, 3), -2.0, 8.0, &[0.0, 6.0], 0.05);
        let build = move |b: &mut Builder, n: &[String]| {
            tuned(b);
            let (lo, hi) = (b.scalar(0.0), b.scalar(6.0));
            b.op("Clip", &[&n[0], &lo, &hi], vec![])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
    check("Clip max only (tuned: ClipGrad)", |seed| {
        let x = avoiding(seed, &dims(seed, 2, 6, 2), -2.0, 2.0, &[0.5], 0.05);
        let build = move |b: &mut Builder, n: &[String]| {
            tuned(b);
            let hi = b.scalar(0.5);
            b.op("Clip", &[&n[0], "", &hi], vec![])
        };
        (vec![("x".into(), x)], 1e-2, Box::new(build))
    });
}

fn batch_norm_cases(tuned: bool) {
    use fieldtune_graph::lower::{batch_norm, batch_norm_node, BatchNormMode};
    let modes: &[BatchNormMode] = if tuned {
        &[BatchNormMode::Train]
    } else {
        &[BatchNormMode::Train, BatchNormMode::Frozen]
    };
    for &mode in modes {
        for rank in [2usize, 4] {
            check(
                &format!("BatchNormalization {mode:?} rank {rank} (tuned: {tuned})"),
                move |seed| {
                    let mut r = rng(seed + rank as u64);
                    let d = dims(seed, 2, 5, 3);
                    let c = d[0];
                    let shape: Vec<usize> = if rank == 4 {
                        vec![3, c, d[1], d[2]]
                    } else {
                        vec![6, c]
                    };
                    let x = uniform(&mut r, &shape, -2.0, 2.0);
                    let scale = uniform(&mut r, &[c], 0.5, 1.5);
                    let bias = uniform(&mut r, &[c], -1.0, 1.0);
                    let mean = uniform(&mut r, &[c], -0.5, 0.5);
                    let var = uniform(&mut r, &[c], 0.5, 2.0);
                    let mut inputs = vec![
                        ("x".into(), x),
                        ("scale".into(), scale),
                        ("bias".into(), bias),
                    ];
                    // Running statistics reach the output only when frozen.
                    let stats = if mode == BatchNormMode::Frozen {
                        inputs.push(("mean".into(), mean));
                        inputs.push(("var".into(), var));
                        None
                    } else {
                        Some((mean, var))
                    };
                    let build = move |b: &mut Builder, n: &[String]| {
                        b.set_fieldtune_ops(tuned);
                        let (m, v) = match &stats {
                            Some((m, v)) => (b.constant(m.clone()), b.constant(v.clone())),
                            None => (n[3].clone(), n[4].clone()),
                        };
                        let node =
                            batch_norm_node("bn", [&n[0], &n[1], &n[2], &m, &v], "bn_y", 1e-5, 0.9);
                        batch_norm(b, &node, mode)?;
                        Ok("bn_y".to_string())
                    };
                    (inputs, 1e-2, Box::new(build))
                },
            );
        }
    }
}

/// Resize as PyTorch's F.interpolate exports it (and ONNX's other coordinate modes):
/// `(mode, coordinate_transformation_mode, nearest_mode, scales or sizes)`.
#[test]
fn resize_nearest_and_bilinear() {
    type Target = Result<[f32; 2], [usize; 2]>;
    let configs: [(&str, &str, &str, Target); 9] = [
        ("nearest", "asymmetric", "floor", Ok([2.0, 2.0])),
        ("nearest", "asymmetric", "floor", Ok([1.5, 1.7])),
        ("nearest", "half_pixel", "round_prefer_floor", Err([7, 9])),
        ("nearest", "asymmetric", "floor", Ok([0.6, 0.5])),
        ("linear", "half_pixel", "floor", Ok([2.0, 2.0])),
        ("linear", "pytorch_half_pixel", "floor", Ok([2.0, 1.5])),
        ("linear", "align_corners", "floor", Ok([2.0, 2.0])),
        ("linear", "align_corners", "floor", Err([8, 11])),
        ("linear", "half_pixel", "floor", Err([3, 2])),
    ];
    for (ci, &(mode, coord, nearest, target)) in configs.iter().enumerate() {
        check(
            &format!("Resize {mode} {coord} {nearest} {target:?}"),
            move |seed| {
                let mut r = rng(seed + 70 * ci as u64);
                let d = dims(seed + ci as u64, 4, 7, 2);
                let x = uniform(&mut r, &[2, 2, d[0], d[1]], -1.0, 1.0);
                let build = move |b: &mut Builder, n: &[String]| {
                    let at = vec![
                        attr::string("mode", mode),
                        attr::string("coordinate_transformation_mode", coord),
                        attr::string("nearest_mode", nearest),
                    ];
                    match target {
                        Ok([sh, sw]) => {
                            let s = b
                                .constant(Tensor::f32(vec![4], vec![1.0, 1.0, sh, sw]).expect("4"));
                            b.op("Resize", &[&n[0], "", &s], at)
                        }
                        Err([h, w]) => {
                            let s = b.ints(&[2, 2, h as i64, w as i64]);
                            b.op("Resize", &[&n[0], "", "", &s], at)
                        }
                    }
                };
                (vec![("x".into(), x)], 1e-2, Box::new(build))
            },
        );
    }
}

/// The forward of PyTorch-exported F.interpolate graphs (scripts/reference/torch_resize_reference.py)
/// on both engines against PyTorch's output.
#[test]
fn resize_forward_matches_pytorch() {
    use fieldtune_graph::{compile_inference, encode_model, load_model};
    use fieldtune_tests::{reference_python, repo_root};
    let dir = std::env::temp_dir().join(format!("fieldtune-resize-{}", std::process::id()));
    let py = reference_python();
    let out = std::process::Command::new(&py)
        .arg(repo_root().join("scripts/reference/torch_resize_reference.py"))
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py} (install python3-torch python3-onnx): {e}"));
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = String::from_utf8(out.stdout).unwrap();
    for case in cases.split_whitespace() {
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{case}.json"))).unwrap())
                .unwrap();
        let floats = |k: &str| -> Vec<f32> {
            j[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        };
        let shape = |k: &str| -> Vec<usize> {
            j[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        };
        let x = Tensor::f32(shape("shape"), floats("input")).unwrap();
        let want = Tensor::f32(shape("output_shape"), floats("output")).unwrap();
        let model = load_model(&dir.join(format!("{case}.onnx"))).unwrap();
        let g = compile_inference(&model, "input", "logits", x.shape()[0])
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let bytes = encode_model(&g.to_model("resize"));
        for engine in engines() {
            let mut s = engine.load(&bytes, case).unwrap();
            let y = s.run(&[("input", &x)]).unwrap().remove(0).1;
            assert_eq!(y.shape(), want.shape(), "{case} on {:?}", engine.kind());
            let worst = y
                .as_f32()
                .unwrap()
                .iter()
                .zip(want.as_f32().unwrap())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-5,
                "{case} on {:?}: differs from PyTorch by {worst:.2e}",
                engine.kind()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dropout_in_training_form() {
    // The mask is a function of (seed, step, key) only, so finite differences see the same
    // mask as the gradient; a gradient without the mask (or without 1 / (1 - ratio)) fails.
    for (ratio, step) in [(0.5f32, 3.0f32), (0.2, 11.0)] {
        check(&format!("Dropout ratio {ratio}"), move |seed| {
            let mut r = rng(seed);
            let x = uniform(&mut r, &dims(seed, 3, 8, 3), -1.0, 1.0);
            let build = move |b: &mut Builder, n: &[String]| {
                let st = b.scalar(step);
                let rt = b.scalar(ratio);
                let node = fieldtune_graph::ir::Node {
                    name: "drop".into(),
                    op: "Dropout".into(),
                    domain: String::new(),
                    inputs: vec![n[0].clone(), rt],
                    outputs: vec!["drop_y".into()],
                    attrs: vec![],
                };
                fieldtune_graph::random::dropout(b, &node, &st, seed, "dropout/gradcheck")?;
                b.op("Mul", &["drop_y", &n[0]], vec![])
            };
            (vec![("x".into(), x)], 1e-2, Box::new(build))
        });
    }
}

#[test]
fn cotta_soft_cross_entropy_and_rotation_cross_entropy() {
    check("CoTTA soft cross-entropy", |seed| {
        let mut r = rng(seed);
        let (bu, k, views) = (5, 4, 3);
        let strong = uniform(&mut r, &[bu, k], -2.0, 2.0);
        let weak = uniform(&mut r, &[bu, k], -3.0, 3.0);
        let aug = uniform(&mut r, &[views * bu, k], -2.0, 2.0);
        let build = move |b: &mut Builder, n: &[String]| {
            let w = b.constant(weak.clone());
            let a = b.constant(aug.clone());
            let (loss, _) = fieldtune_graph::loss::cotta(b, &w, &a, &n[0], views, 0.6)?;
            Ok(loss)
        };
        (vec![("strong".into(), strong)], 1e-2, Box::new(build))
    });
    for distance in [FeatureDistance::Cosine, FeatureDistance::L2] {
        check(&format!("feature consistency {distance:?}"), |seed| {
            let mut r = rng(seed);
            let strong = uniform(&mut r, &[5, 6], -2.0, 2.0);
            let weak = uniform(&mut r, &[5, 6], -2.0, 2.0);
            let build = move |b: &mut Builder, n: &[String]| {
                let w = b.constant(weak.clone());
                fieldtune_graph::loss::feature_distance(b, &w, &n[0], distance)
            };
            (vec![("strong".into(), strong)], 1e-2, Box::new(build))
        });
    }
    check("rotation cross-entropy", |seed| {
        let mut r = rng(seed);
        let logits = uniform(&mut r, &[8, 4], -2.0, 2.0);
        let build = move |b: &mut Builder, n: &[String]| {
            let labels = b.constant(Tensor::i64(vec![8], vec![0, 0, 1, 1, 2, 2, 3, 3]).unwrap());
            let (ce, _) = fieldtune_graph::loss::cross_entropy(b, &n[0], &labels)?;
            Ok(ce)
        };
        (vec![("logits".into(), logits)], 1e-2, Box::new(build))
    });
}

/// A small classifier with a Dropout node (Flatten, Gemm, Tanh, Dropout 0.5, Gemm).
fn dropout_model() -> fieldtune_graph::proto::ModelProto {
    use fieldtune_graph::ir::Elem;
    let mut r = rng(77);
    let mut b = Builder::new(17);
    let x = b.input("input", Elem::F32, &[2, 1, 4, 4]).unwrap();
    b.initializer("fc1.weight", uniform(&mut r, &[8, 16], -0.5, 0.5))
        .unwrap();
    b.initializer("fc1.bias", uniform(&mut r, &[8], -0.1, 0.1))
        .unwrap();
    b.initializer("fc2.weight", uniform(&mut r, &[3, 8], -0.5, 0.5))
        .unwrap();
    b.initializer("ratio", Tensor::scalar_f32(0.5)).unwrap();
    let f = b.op("Flatten", &[&x], vec![attr::int("axis", 1)]).unwrap();
    let h = b
        .op(
            "Gemm",
            &[&f, "fc1.weight", "fc1.bias"],
            vec![attr::int("transB", 1)],
        )
        .unwrap();
    let t = b.op("Tanh", &[&h], vec![]).unwrap();
    b.add(fieldtune_graph::ir::Node {
        name: "drop".into(),
        op: "Dropout".into(),
        domain: String::new(),
        inputs: vec![t, "ratio".into()],
        outputs: vec!["dropped".into()],
        attrs: vec![],
    })
    .unwrap();
    let y = b
        .op(
            "Gemm",
            &["dropped", "fc2.weight"],
            vec![attr::int("transB", 1)],
        )
        .unwrap();
    b.output_as(&y, "logits").unwrap();
    b.finish("dropout-net").to_model("gradcheck")
}

#[test]
fn train_step_with_dropout_matches_finite_differences() {
    use fieldtune_graph::{compile_train_step, encode_model, inputs, TrainSpec, UdaLoss};
    let model = dropout_model();
    let spec = |dropout: bool| TrainSpec {
        batch_labeled: 6,
        batch_unlabeled: 5,
        loss: UdaLoss {
            consistency_weight: 0.0,
            entropy_weight: 0.0,
            diversity_weight: 0.0,
            ..UdaLoss::default()
        },
        optimizer: fieldtune_graph::Optimizer::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        },
        emit_gradients: true,
        dropout,
        seed: 4,
        ..TrainSpec::default()
    };
    let mut r = rng(5);
    let xl = uniform(&mut r, &[6, 1, 4, 4], -1.0, 1.0);
    let yl = Tensor::i64(vec![6], vec![0, 1, 2, 0, 1, 2]).unwrap();
    let xu = uniform(&mut r, &[5, 1, 4, 4], -1.0, 1.0);
    let lr = Tensor::scalar_f32(0.1);
    for engine in engines() {
        let mut losses = Vec::new();
        for dropout in [false, true] {
            let step = compile_train_step(&model, &spec(dropout)).expect("compile");
            let mut s = engine
                .load(&encode_model(&step.to_model()), "dropout step")
                .expect("load");
            let run = |s: &mut Box<dyn fieldtune_engine::Session>,
                       k: f32,
                       over: Option<(&str, &Tensor)>| {
                let st = Tensor::scalar_f32(k);
                let mut feeds: Vec<(&str, &Tensor)> = vec![
                    (inputs::X_LABELED, &xl),
                    (inputs::Y_LABELED, &yl),
                    (inputs::X_WEAK, &xu),
                    (inputs::X_STRONG, &xu),
                    (inputs::LR, &lr),
                    (inputs::STEP, &st),
                ];
                for (n, t) in step.params.iter().chain(&step.state) {
                    match over {
                        Some((o, v)) if o == n => feeds.push((n.as_str(), v)),
                        _ => feeds.push((n.as_str(), t)),
                    }
                }
                s.run(&feeds).expect("run")
            };
            let get = |outs: &[(String, Tensor)], n: &str| {
                outs.iter().find(|(k, _)| k == n).expect(n).1.clone()
            };
            let base = run(&mut s, 3.0, None);
            let loss = get(&base, "loss").as_f32().unwrap()[0];
            let loss4 = get(&run(&mut s, 4.0, None), "loss").as_f32().unwrap()[0];
            losses.push((loss, loss4));
            for (name, p) in &step.params {
                let g = get(&base, &format!("grad.{name}"));
                let eps = 1e-2f32;
                for _ in 0..2 {
                    let v = uniform(&mut r, p.shape(), -1.0, 1.0);
                    let analytic: f64 = g
                        .as_f32()
                        .unwrap()
                        .iter()
                        .zip(v.as_f32().unwrap())
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    let mut shifted = |sign: f32| {
                        let t = Tensor::f32(
                            p.shape().to_vec(),
                            p.as_f32()
                                .unwrap()
                                .iter()
                                .zip(v.as_f32().unwrap())
                                .map(|(a, b)| a + sign * eps * b)
                                .collect(),
                        )
                        .unwrap();
                        let outs = run(&mut s, 3.0, Some((name.as_str(), &t)));
                        get(&outs, "loss").as_f32().unwrap()[0] as f64
                    };
                    let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
                    let err = (analytic - fd).abs() / analytic.abs().max(fd.abs()).max(FLOOR);
                    assert!(
                        err < TOL,
                        "{:?} dropout={dropout} {name}: analytic {analytic}, numeric {fd}",
                        engine.kind()
                    );
                }
            }
        }
        // Without dropout the step number does not change the loss; with it, it does.
        assert_eq!(losses[0].0, losses[0].1);
        assert_ne!(losses[1].0, losses[1].1);
        assert_ne!(losses[0].0, losses[1].0);
    }
}

#[test]
fn maxpool_ceil_mode() {
    // (kernel, stride, pads): the last window runs past the end (SqueezeNet's and GoogLeNet's
    // 3x3 stride-2 pools on odd and even sizes, and with padding).
    let configs: [(i64, i64, [i64; 4]); 3] = [
        (3, 2, [0, 0, 0, 0]),
        (3, 2, [1, 1, 1, 1]),
        (2, 2, [0, 0, 0, 0]),
    ];
    for (ci, &(k, s, pads)) in configs.iter().enumerate() {
        check(&format!("MaxPool ceil_mode config {ci}"), move |seed| {
            let mut r = rng(seed + 10 * ci as u64);
            let d = dims(seed, 4, 9, 2);
            let x = distinct(&mut r, &[2, 2, d[0], d[1]], 20.0);
            let build = move |b: &mut Builder, n: &[String]| {
                b.op(
                    "MaxPool",
                    &[&n[0]],
                    vec![
                        attr::ints("kernel_shape", &[k, k]),
                        attr::ints("strides", &[s, s]),
                        attr::ints("pads", &pads),
                        attr::int("ceil_mode", 1),
                    ],
                )
            };
            (vec![("x".into(), x)], 5e-3, Box::new(build))
        });
    }
}

/// A ceil-mode window that would start in the end padding (PyTorch drops it; ONNX Runtime's
/// graph shape inference keeps it while its kernel drops it) is refused by name.
#[test]
fn maxpool_ceil_mode_window_in_the_end_padding_is_refused() {
    let mut b = Builder::new(17);
    let x = b.input("x", Elem::F32, &[1, 1, 5, 5]).unwrap();
    let err = b
        .op(
            "MaxPool",
            &[&x],
            vec![
                attr::ints("kernel_shape", &[2, 2]),
                attr::ints("strides", &[2, 2]),
                attr::ints("pads", &[1, 1, 1, 1]),
                attr::int("ceil_mode", 1),
            ],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MaxPool") && err.contains("end padding"),
        "{err}"
    );
}

#[test]
fn abs_pow_max_min() {
    check("Abs", |seed| {
        let mut r = rng(seed);
        let x = away_from_zero(&mut r, &dims(seed, 2, 5, 2), 0.1);
        (
            vec![("x".into(), x)],
            1e-3,
            Box::new(|b: &mut Builder, n: &[String]| b.op("Abs", &[&n[0]], vec![])),
        )
    });
    // Both the base and a broadcast exponent take gradients.
    check("Pow", |seed| {
        let mut r = rng(seed);
        let d = dims(seed, 2, 5, 2);
        let a = uniform(&mut r, &d, 0.3, 1.5);
        let e = uniform(&mut r, &[d[1]], 0.5, 2.5);
        (
            vec![("a".into(), a), ("e".into(), e)],
            1e-3,
            Box::new(|b: &mut Builder, n: &[String]| b.op("Pow", &[&n[0], &n[1]], vec![])),
        )
    });
    for op in ["Max", "Min"] {
        check(op, move |seed| {
            let mut r = rng(seed);
            let d = dims(seed, 2, 5, 2);
            // c is broadcast along the first axis; every a differs from its c by at least 0.1,
            // so no perturbation crosses a tie.
            let c = uniform(&mut r, &[d[1]], -1.0, 1.0);
            let cs = c.as_f32().unwrap().to_vec();
            let av: Vec<f32> = (0..d[0] * d[1])
                .map(|i| {
                    let off = r.gen_range(0.1f32..0.8);
                    cs[i % d[1]] + if r.gen_bool(0.5) { off } else { -off }
                })
                .collect();
            let a = Tensor::f32(d.clone(), av).expect("sized");
            (
                vec![("a".into(), a), ("c".into(), c)],
                1e-3,
                Box::new(move |b: &mut Builder, n: &[String]| b.op(op, &[&n[0], &n[1]], vec![])),
            )
        });
    }
}

#[test]
fn layer_normalization_last_axis_and_channels() {
    // (shape, axis): a transformer's [batch, tokens, width] over the width, and a
    // [batch, C, H, W] map over C, H, W.
    let cases: [(&[usize], i64); 2] = [(&[2, 3, 6], -1), (&[2, 3, 2, 2], 1)];
    for (ci, &(shape, axis)) in cases.iter().enumerate() {
        check(&format!("LayerNormalization case {ci}"), move |seed| {
            let mut r = rng(seed + 20 * ci as u64);
            let x = uniform(&mut r, shape, -2.0, 2.0);
            let norm = &shape[axis.rem_euclid(shape.len() as i64) as usize..];
            let scale = uniform(&mut r, norm, 0.5, 1.5);
            let bias = uniform(&mut r, norm, -0.5, 0.5);
            let build = move |b: &mut Builder, n: &[String]| {
                let y = b.op(
                    "LayerNormalization",
                    &[&n[0], &n[1], &n[2]],
                    vec![attr::int("axis", axis), attr::float("epsilon", 1e-5)],
                )?;
                // Squared, so that the loss depends on more than the normalized sum.
                b.op("Mul", &[&y, &y], vec![])
            };
            (
                vec![
                    ("x".into(), x),
                    ("scale".into(), scale),
                    ("bias".into(), bias),
                ],
                1e-3,
                Box::new(build),
            )
        });
    }
}
