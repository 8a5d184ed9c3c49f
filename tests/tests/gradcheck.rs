//! Every autodiff rule against central finite differences, on random shapes, on both
//! engines (ONNX Runtime and tract).

use fieldtune_graph::builder::Builder;
use fieldtune_graph::ir::attr;
use fieldtune_tensor::Tensor;
use fieldtune_tests::{away_from_zero, distinct, engines, gradcheck, rng, uniform};
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
    for engine in engines() {
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
    let configs: [(usize, usize, usize, [i64; 4], usize); 7] = [
        (1, 1, 1, [0, 0, 0, 0], 1), // pointwise (its own weight-gradient form)
        (1, 1, 1, [1, 1, 1, 1], 3),
        (1, 2, 1, [0, 1, 1, 0], 3),
        (1, 2, 2, [2, 2, 2, 2], 3),
        (2, 1, 1, [0, 0, 0, 0], 2),
        (3, 3, 1, [1, 0, 2, 1], 3),
        (4, 1, 1, [1, 1, 1, 1], 3), // depthwise (channels = groups = 4)
    ];
    for (ci, &(g, s, d, pads, k)) in configs.iter().enumerate() {
        check(&format!("Conv config {ci}"), move |seed| {
            let mut r = rng(seed + 10 * ci as u64);
            let dd = dims(seed + ci as u64, 5, 9, 3);
            let (n, hw) = (dd[0] % 3 + 1, dd[1] + 2);
            let cin = g * (dd[2] % 2 + 1);
            let cin = if ci == 6 { 4 } else { cin };
            let m = if ci == 6 { 4 } else { g * (dd[1] % 3 + 1) };
            let x = uniform(&mut r, &[n, cin, hw, hw + 1], -1.0, 1.0);
            let w = uniform(&mut r, &[m, cin / g, k, k], -1.0, 1.0);
            let bias = uniform(&mut r, &[m], -1.0, 1.0);
            let inputs = vec![("x".into(), x), ("w".into(), w), ("b".into(), bias)];
            let build = move |b: &mut Builder, n: &[String]| {
                b.op(
                    "Conv",
                    &[&n[0], &n[1], &n[2]],
                    vec![
                        attr::int("group", g as i64),
                        attr::ints("strides", &[s as i64, s as i64]),
                        attr::ints("dilations", &[d as i64, d as i64]),
                        attr::ints("pads", &pads),
                        attr::ints("kernel_shape", &[k as i64, k as i64]),
                    ],
                )
            };
            (inputs, 1e-2, Box::new(build))
        });
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
    // (kernel, stride, pads)
    let configs: [(i64, i64, [i64; 4]); 3] = [
        (2, 2, [0, 0, 0, 0]),
        (3, 2, [1, 1, 1, 1]),
        (3, 1, [0, 1, 0, 1]),
    ];
    for (ci, &(k, s, pads)) in configs.iter().enumerate() {
        check(&format!("MaxPool config {ci}"), move |seed| {
            let mut r = rng(seed + ci as u64);
            let d = dims(seed, 4, 9, 2);
            let x = distinct(&mut r, &[2, d[0] % 3 + 1, d[0], d[1]], 20.0);
            let build = move |b: &mut Builder, n: &[String]| {
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
        });
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
    for op in ["Exp", "Log", "Neg", "Sqrt", "Sigmoid", "Tanh", "Identity"] {
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
fn unsupported_op_on_the_gradient_path_is_refused_by_name() {
    let mut b = Builder::new(17);
    let x = b
        .input("x", fieldtune_graph::ir::Elem::F32, &[2, 3])
        .unwrap();
    let y = b.op("Abs", &[&x], vec![]).unwrap();
    let l = b.reduce("ReduceSum", &y, &[0, 1], false).unwrap();
    let err = fieldtune_graph::autodiff::backward(&mut b, &l, &["x".into()]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("Abs") && msg.contains("no gradient rule"),
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
    use fieldtune_graph::lower::{batch_norm, batch_norm_node, BatchNormMode};
    for mode in [BatchNormMode::Train, BatchNormMode::Frozen] {
        for rank in [2usize, 4] {
            check(
                &format!("BatchNormalization {mode:?} rank {rank}"),
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
