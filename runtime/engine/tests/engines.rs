//! Both engines on small built models and the shipped MNIST CNN: parity, symbolic batch,
//! input validation, bad model bytes, resident state.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use fieldtune_engine::{
    doctor_report, select_engine, Engine, EngineError, EngineKind, EnginePreference, OrtOptions,
    OrtSource, StatefulSession, Tensor, TractEngine,
};

#[test]
fn ort_found_by_discovery_runs_on_cpu() {
    let e = ort();
    let info = e.runtime_info();
    assert!(info.version.starts_with("1."), "version {}", info.version);
    assert!(info.location.path.exists());
    eprintln!("ONNX Runtime {} from {}", info.version, info.location);
    let s = e.load(&gemm_relu_model(), "gemm").unwrap();
    assert_eq!(s.execution_provider(), "CPUExecutionProvider");
    assert!(e.describe().contains("CPUExecutionProvider"));
    let t = TractEngine::new().load(&gemm_relu_model(), "gemm").unwrap();
    assert_eq!(t.execution_provider(), "tract-cpu");
}

#[test]
fn io_info_reports_symbolic_batch() {
    for e in engines() {
        let s = e.load(&gemm_relu_model(), "gemm").unwrap();
        assert_eq!(
            s.inputs().len(),
            1,
            "{:?}: initializers are not inputs",
            e.kind()
        );
        assert_eq!(s.inputs()[0].name, "x");
        assert_eq!(s.inputs()[0].shape, vec![None, Some(4)], "{:?}", e.kind());
        assert_eq!(s.inputs()[0].onnx_type, "float");
        assert_eq!(s.outputs()[0].name, "y");
        assert_eq!(s.outputs()[0].shape, vec![None, Some(3)], "{:?}", e.kind());
    }
}

#[test]
fn gemm_relu_parity_batch_1_and_7() {
    let mut rng = Rng::new(1);
    let engines = engines();
    let mut sessions: Vec<_> = engines
        .iter()
        .map(|e| e.load(&gemm_relu_model(), "gemm").unwrap())
        .collect();
    for batch in [1usize, 7, 1] {
        let x = rng.tensor(&[batch, 4]);
        let want = Tensor::f32(vec![batch, 3], gemm_relu_reference(&x)).unwrap();
        let mut outs = Vec::new();
        for (e, s) in engines.iter().zip(sessions.iter_mut()) {
            let out = s.run(&[("x", &x)]).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, "y");
            assert_close(
                &out[0].1,
                &want,
                1e-5,
                &format!("{:?} vs reference, batch {batch}", e.kind()),
            );
            outs.push(out.into_iter().next().unwrap().1);
        }
        assert_close(
            &outs[0],
            &outs[1],
            1e-4,
            &format!("ort vs tract, batch {batch}"),
        );
    }
}

#[test]
fn conv_with_weight_input_parity() {
    let mut rng = Rng::new(2);
    let x = rng.tensor(&[2, 3, 8, 8]);
    let w = rng.tensor(&[4, 3, 3, 3]);
    let mut outs = Vec::new();
    for e in engines() {
        let mut s = e.load(&conv_weight_input_model(), "conv").unwrap();
        assert_eq!(s.inputs().len(), 2);
        let out = s.run_fetch(&[("w", &w), ("x", &x)], &["y"]).unwrap();
        assert_eq!(out[0].shape(), &[2, 4, 4, 4]);
        outs.push(out.into_iter().next().unwrap());
    }
    assert_close(&outs[0], &outs[1], 1e-4, "conv ort vs tract");
}

fn mnist_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-cnn/model.onnx")
}

#[test]
fn mnist_cnn_parity_batch_1_and_7() {
    let path = mnist_path();
    assert!(
        path.exists(),
        "shipped model {} is missing (models/mnist-cnn is made by the models task)",
        path.display()
    );
    let mut rng = Rng::new(3);
    let engines = engines();
    let mut sessions: Vec<_> = engines
        .iter()
        .map(|e| e.load_file(&path).unwrap())
        .collect();
    for s in &sessions {
        assert_eq!(s.inputs()[0].name, "input");
        assert_eq!(&s.inputs()[0].shape[1..], &[Some(1), Some(28), Some(28)]);
        assert!(s.outputs().iter().any(|o| o.name == "logits"));
    }
    for batch in [1usize, 7] {
        let x = Tensor::f32(
            vec![batch, 1, 28, 28],
            rng.vec(batch * 784).into_iter().map(|v| v.abs()).collect(),
        )
        .unwrap();
        let outs: Vec<Tensor> = sessions
            .iter_mut()
            .map(|s| {
                s.run_fetch(&[("input", &x)], &["logits"])
                    .unwrap()
                    .remove(0)
            })
            .collect();
        assert_eq!(outs[0].shape(), &[batch, 10]);
        assert_close(
            &outs[0],
            &outs[1],
            1e-4,
            &format!("mnist ort vs tract, batch {batch}"),
        );
    }
}

#[test]
fn bad_inputs_give_named_errors() {
    for e in engines() {
        let k = e.kind();
        let mut s = e.load(&conv_weight_input_model(), "conv").unwrap();
        let x = Tensor::zeros_f32(vec![2, 3, 8, 8]);
        let w = Tensor::zeros_f32(vec![4, 3, 3, 3]);
        let bad_x = Tensor::zeros_f32(vec![2, 3, 9, 8]);

        match s.run(&[("x", &bad_x), ("w", &w)]).unwrap_err() {
            EngineError::ShapeMismatch {
                model,
                tensor,
                expected,
                got,
            } => {
                assert_eq!(model, "conv");
                assert_eq!(tensor, "x");
                assert_eq!(expected, vec![Some(2), Some(3), Some(8), Some(8)]);
                assert_eq!(got, vec![2, 3, 9, 8]);
            }
            other => panic!("{k:?}: {other}"),
        }
        let msg = s.run(&[("x", &bad_x), ("w", &w)]).unwrap_err().to_string();
        assert!(
            msg.contains("'x'") && msg.contains("[2, 3, 8, 8]") && msg.contains("[2, 3, 9, 8]"),
            "{msg}"
        );

        let rank = Tensor::zeros_f32(vec![2, 3, 8]);
        assert!(
            matches!(
                s.run(&[("x", &rank), ("w", &w)]),
                Err(EngineError::ShapeMismatch { .. })
            ),
            "{k:?}"
        );
        assert!(
            matches!(s.run(&[("x", &x)]), Err(EngineError::MissingInput { ref tensor, .. }) if tensor == "w"),
            "{k:?}"
        );
        assert!(
            matches!(s.run(&[("x", &x), ("w", &w), ("z", &w)]), Err(EngineError::UnknownInput { ref tensor, .. }) if tensor == "z"),
            "{k:?}"
        );
        assert!(
            matches!(
                s.run(&[("x", &x), ("x", &x), ("w", &w)]),
                Err(EngineError::DuplicateInput { .. })
            ),
            "{k:?}"
        );
        let xi = Tensor::i64(vec![2, 3, 8, 8], vec![0; 384]).unwrap();
        match s.run(&[("x", &xi), ("w", &w)]).unwrap_err() {
            EngineError::DTypeMismatch {
                tensor,
                expected,
                got,
                ..
            } => {
                assert_eq!(tensor, "x");
                assert_eq!(expected, fieldtune_engine::DType::F32);
                assert_eq!(got, fieldtune_engine::DType::I64);
            }
            other => panic!("{k:?}: {other}"),
        }
        assert!(matches!(
            s.run_fetch(&[("x", &x), ("w", &w)], &["nope"]),
            Err(EngineError::UnknownOutput { .. })
        ));
        // Symbolic batch accepts any batch but checks static dims.
        let mut g = e.load(&gemm_relu_model(), "gemm").unwrap();
        let wrong = Tensor::zeros_f32(vec![5, 3]);
        assert!(
            matches!(g.run(&[("x", &wrong)]), Err(EngineError::ShapeMismatch { ref tensor, .. }) if tensor == "x"),
            "{k:?}"
        );
        // The session still works after errors.
        assert!(s.run(&[("x", &x), ("w", &w)]).is_ok(), "{k:?}");
    }
}

#[test]
fn corrupt_or_truncated_models_are_errors_not_panics() {
    let good = gemm_relu_model();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        (
            "garbage",
            (0..200u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("truncated-1", good[..good.len() - 1].to_vec()),
        ("text", b"this is not an onnx model".to_vec()),
        (
            "unknown-op",
            model_bytes(
                17,
                vec![node("NoSuchOp", &["x"], &["y"], vec![])],
                vec![vi("x", FLOAT, &[1])],
                vec![vi("y", FLOAT, &[1])],
                vec![],
                vec![],
            ),
        ),
        (
            "dangling-input",
            model_bytes(
                17,
                vec![node("Relu", &["missing"], &["y"], vec![])],
                vec![vi("x", FLOAT, &[1])],
                vec![vi("y", FLOAT, &[1])],
                vec![],
                vec![],
            ),
        ),
    ];
    for e in engines() {
        for (name, bytes) in &cases {
            match e.load(bytes, name) {
                Err(EngineError::ModelLoad {
                    model,
                    engine,
                    message,
                }) => {
                    assert_eq!(&model, name);
                    assert_eq!(engine, e.kind());
                    assert!(!message.is_empty());
                }
                Err(other) => panic!("{:?} {name}: unexpected error variant {other}", e.kind()),
                Ok(_) => panic!("{:?} {name}: loaded a bad model", e.kind()),
            }
        }
    }
    let err = TractEngine::new()
        .load(&cases[5].1, "unknown-op")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("NoSuchOp"), "{err}");
}

#[test]
fn missing_model_file_is_an_error() {
    let e = TractEngine::new();
    assert!(matches!(
        e.load_file(std::path::Path::new("/no/such/model.onnx")),
        Err(EngineError::ModelFile { .. })
    ));
}

#[test]
fn stateful_session_loops_state() {
    for e in engines() {
        let k = e.kind();
        let s = e.load(&add_delta_model(), "add").unwrap();
        let x0 = Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
        let mut st = StatefulSession::new(
            s,
            HashMap::from([("x".to_string(), x0.clone())]),
            vec![("x_new".to_string(), "x".to_string())],
        )
        .unwrap();
        let one = Tensor::scalar_f32(1.0);
        let mut total = None;
        for _ in 0..3 {
            let out = st.step(&[("delta", &one)], &["total", "x_new"]).unwrap();
            assert_eq!(out.len(), 2);
            assert_eq!(
                out[1],
                *st.state("x").unwrap(),
                "{k:?}: fetched output equals the new state"
            );
            total = Some(out[0].clone());
        }
        assert_eq!(
            st.state("x").unwrap().as_f32().unwrap(),
            &[4.0, 5.0, 6.0],
            "{k:?}"
        );
        assert_eq!(total.unwrap().as_f32().unwrap(), &[15.0], "{k:?}");

        // A step the caller rejects (here: a non-finite total) leaves the state alone.
        let nan = Tensor::scalar_f32(f32::NAN);
        let finite = |v: &[Tensor]| v[0].as_f32().unwrap().iter().all(|x| x.is_finite());
        let (out, moved) = st.step_if(&[("delta", &nan)], &["total"], &finite).unwrap();
        assert!(!moved && out[0].as_f32().unwrap()[0].is_nan(), "{k:?}");
        assert_eq!(
            st.state("x").unwrap().as_f32().unwrap(),
            &[4.0, 5.0, 6.0],
            "{k:?}"
        );
        let (_, moved) = st
            .step_if(&[("delta", &Tensor::scalar_f32(0.0))], &["total"], &finite)
            .unwrap();
        assert!(moved, "{k:?}");

        // A failing step leaves the state alone.
        let bad = Tensor::f32(vec![2], vec![1.0, 1.0]).unwrap();
        assert!(st.step(&[("delta", &bad)], &[]).is_err());
        assert_eq!(st.state("x").unwrap().as_f32().unwrap(), &[4.0, 5.0, 6.0]);
        // State cannot also be fed.
        assert!(matches!(
            st.step(&[("delta", &one), ("x", &x0)], &[]),
            Err(EngineError::State { .. })
        ));
        // Roll back.
        st.set_state("x", x0.clone()).unwrap();
        assert!(st.set_state("x", one.clone()).is_err());
        let state = st.into_state();
        assert_eq!(state["x"], x0);
    }
}

#[test]
fn stateful_session_checks_configuration() {
    let e = TractEngine::new();
    let x0 = Tensor::f32(vec![3], vec![0.0; 3]).unwrap();
    let mk = |state: Vec<(&str, Tensor)>, loops: Vec<(&str, &str)>| {
        StatefulSession::new(
            e.load(&add_delta_model(), "add").unwrap(),
            state.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            loops
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    };
    assert!(matches!(
        mk(vec![("nope", x0.clone())], vec![]),
        Err(EngineError::State { .. })
    ));
    assert!(matches!(
        mk(vec![("x", x0.clone())], vec![("nope", "x")]),
        Err(EngineError::UnknownOutput { .. })
    ));
    assert!(matches!(
        mk(vec![("x", x0.clone())], vec![("x_new", "delta")]),
        Err(EngineError::State { .. })
    ));
    assert!(matches!(
        mk(
            vec![("x", Tensor::f32(vec![4], vec![0.0; 4]).unwrap())],
            vec![]
        ),
        Err(EngineError::ShapeMismatch { .. })
    ));
    assert!(mk(vec![("x", x0)], vec![("x_new", "x")]).is_ok());
}

#[test]
fn resident_session_through_the_trait() {
    for e in engines() {
        let s = e.load(&add_delta_model(), "add").unwrap();
        let mut r = s
            .into_resident(
                HashMap::from([("x".to_string(), Tensor::f32(vec![3], vec![0.0; 3]).unwrap())]),
                vec![("x_new".to_string(), "x".to_string())],
            )
            .unwrap();
        let half = Tensor::scalar_f32(0.5);
        for _ in 0..4 {
            r.step(&[("delta", &half)], &[]).unwrap();
        }
        assert_eq!(
            r.read_state("x").unwrap().unwrap().as_f32().unwrap(),
            &[2.0, 2.0, 2.0]
        );
        assert_eq!(r.state_names(), vec!["x".to_string()]);
        let state = r.export_state().unwrap();
        assert_eq!(state["x"].as_f32().unwrap(), &[2.0, 2.0, 2.0]);
    }
}

#[test]
fn select_engine_prefers_ort_and_honours_tract() {
    let auto = select_engine(EnginePreference::Auto, OrtOptions::default()).unwrap();
    assert_eq!(
        auto.kind(),
        EngineKind::Ort,
        "ONNX Runtime not found: run scripts/install-ort.sh"
    );
    let t = select_engine(EnginePreference::Tract, OrtOptions::default()).unwrap();
    assert_eq!(t.kind(), EngineKind::Tract);
    assert!(t.describe().contains("tract"));
}

#[test]
fn missing_cuda_is_reported_not_replaced() {
    // The CPU wheel has no CUDA provider: asking for it must fail, not fall back to CPU.
    let opts = OrtOptions {
        providers: vec![fieldtune_engine::ExecutionProvider::Cuda { device: 0 }],
        ..Default::default()
    };
    match select_engine(EnginePreference::Auto, opts) {
        Err(EngineError::ExecutionProvider { provider, .. }) => {
            assert_eq!(provider, "CUDAExecutionProvider")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(e) => {
            // A CUDA build: then loading must really get CUDA.
            let s = e.load(&gemm_relu_model(), "gemm").unwrap();
            assert_eq!(s.execution_provider(), "CUDAExecutionProvider");
        }
    }
}

#[test]
fn doctor_reports_ort_tract_and_cpu() {
    let r = doctor_report(None);
    let info = r
        .ort
        .as_ref()
        .expect("ONNX Runtime not found: run scripts/install-ort.sh");
    assert!(r
        .execution_providers
        .iter()
        .any(|p| p == "CPUExecutionProvider"));
    assert!(r
        .candidates
        .iter()
        .any(|c| c.tried == Some(None) && c.location.path == info.location.path));
    assert!(!r.searched.is_empty());
    assert_eq!(r.tract_version, fieldtune_engine::TRACT_VERSION);
    assert_eq!(r.cpu.arch, std::env::consts::ARCH);
    if info.location.source == OrtSource::ProjectLocal {
        assert!(info.location.path.to_string_lossy().contains(".ort/lib"));
    }
    let text = r.to_string();
    eprintln!("{text}");
    assert!(text.contains("ONNX Runtime: ") && text.contains("tract: ") && text.contains("CPU: "));
}

/// The loaded library is at least the build's minimum, doctor says what it lacks, and a
/// feature it lacks is a named error. `FIELDTUNE_EXPECT_ORT_VERSION` (set by CI's
/// oldest-library step) pins which library must have been loaded.
#[test]
fn loaded_library_meets_the_minimum_and_features_are_gated() {
    use fieldtune_engine::{OrtFeature, OrtVersion, ORT_MIN_VERSION};
    let r = doctor_report(None);
    let info = r.ort.as_ref().expect("ONNX Runtime not found");
    if let Ok(want) = std::env::var("FIELDTUNE_EXPECT_ORT_VERSION") {
        assert_eq!(info.version, want, "loaded {}", info.location);
    }
    let v = OrtVersion::parse(&info.version).expect("version string");
    assert!(v >= ORT_MIN_VERSION, "{v} < {ORT_MIN_VERSION}");
    assert_eq!(r.ort_min_version, ORT_MIN_VERSION);
    let text = r.to_string();
    let min = format!(
        "minimum: ONNX Runtime {}.{} (",
        ORT_MIN_VERSION.major, ORT_MIN_VERSION.minor
    );
    assert!(text.contains(&min), "{text}");
    for f in OrtFeature::ALL {
        let has = f.available_in(v);
        assert_eq!(info.supports(f), has);
        assert_eq!(r.ort_lacks.contains(&f), !has);
        assert_eq!(text.contains(&format!("lacks: {f}")), !has, "{text}");
        match info.require(f) {
            Ok(()) => assert!(has),
            Err(e) => {
                assert!(!has);
                assert!(matches!(e, EngineError::OrtTooOld { .. }));
                let msg = e.to_string();
                assert!(msg.contains(&f.min_version().to_string()), "{msg}");
                assert!(msg.contains(&info.version), "{msg}");
            }
        }
    }
}

#[test]
fn tract_caches_plans_per_shape() {
    use fieldtune_engine::TractSession;
    let _ = std::any::type_name::<TractSession>();
    let e = TractEngine::new();
    let mut s = e.load(&gemm_relu_model(), "gemm").unwrap();
    for b in [1usize, 2, 1, 2, 3] {
        let x = Tensor::zeros_f32(vec![b, 4]);
        let y = s.run(&[("x", &x)]).unwrap();
        assert_eq!(y[0].1.shape(), &[b, 3]);
    }
}

/// CPU ticks (user + system) spent so far by this process's threads named `fieldtune-tract*`
/// (tract's pool; Linux truncates thread names to 15 bytes).
fn tract_pool_ticks() -> u64 {
    let mut ticks = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("fieldtune-tract") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    ticks
}

#[test]
fn tract_on_a_thread_pool_matches_one_thread_and_uses_the_pool() {
    let (m, k, n) = (512usize, 1024usize, 1024usize);
    let mut rng = Rng::new(7);
    let model = model_bytes(
        17,
        vec![
            node("MatMul", &["x", "w"], &["xw"], vec![]),
            node("Relu", &["xw"], &["y"], vec![]),
        ],
        vec![vi("x", FLOAT, &[m as i64, k as i64])],
        vec![vi("y", FLOAT, &[m as i64, n as i64])],
        vec![init_f32("w", &[k as i64, n as i64], rng.vec(k * n))],
        vec![],
    );
    let x = rng.tensor(&[m, k]);
    let one = TractEngine::new();
    let two = TractEngine::with_threads(2);
    assert_eq!(one.threads(), 1);
    assert_eq!(two.threads(), 2);
    assert!(two.describe().contains("2 threads"), "{}", two.describe());
    let want = one.load(&model, "mm").unwrap().run(&[("x", &x)]).unwrap();
    let mut s = two.load(&model, "mm").unwrap();
    let before = tract_pool_ticks();
    let mut got = Vec::new();
    for _ in 0..20 {
        got = s.run(&[("x", &x)]).unwrap();
    }
    let used = tract_pool_ticks() - before;
    // Each output element's sum stays on one thread: the results are bit for bit the same.
    assert_eq!(got[0].1, want[0].1);
    assert!(used > 0, "tract's pool threads did no work (ticks {used})");
}

/// Runs the Gemm+ReLU model on one session of `e` at each batch size in turn (repeated runs
/// included) and checks every output against the reference to 1e-5.
fn gemm_relu_gives_the_reference(e: &dyn Engine, rng: &mut Rng, batches: &[usize], what: &str) {
    let mut s = e.load(&gemm_relu_model(), "gemm").unwrap();
    for &batch in batches {
        let x = rng.tensor(&[batch, 4]);
        let want = Tensor::f32(vec![batch, 3], gemm_relu_reference(&x)).unwrap();
        let out = s.run(&[("x", &x)]).unwrap();
        assert_close(&out[0].1, &want, 1e-5, what);
    }
}

#[test]
fn ort_arena_and_memory_pattern_settings_compute_the_same() {
    // Memory settings change where tensors live, never what is computed: every combination
    // gives the reference, on repeated runs (the memory pattern takes over from the second).
    let mut rng = Rng::new(11);
    for (no_cpu_arena, memory_pattern) in
        [(false, false), (false, true), (true, false), (true, true)]
    {
        let e = select_engine(
            EnginePreference::Ort,
            OrtOptions {
                intra_threads: Some(1),
                no_cpu_arena,
                memory_pattern,
                ..Default::default()
            },
        )
        .unwrap();
        gemm_relu_gives_the_reference(
            e.as_ref(),
            &mut rng,
            &[3, 3, 5],
            &format!("arena off {no_cpu_arena}, pattern {memory_pattern}"),
        );
    }
}

#[test]
fn ort_intra_op_spinning_off_computes_the_same() {
    // `no_intra_spinning` only changes how idle intra-op threads wait: with two threads and
    // the setting on, the session loads and gives the reference on repeated runs.
    let mut rng = Rng::new(12);
    for no_intra_spinning in [false, true] {
        let e = select_engine(
            EnginePreference::Ort,
            OrtOptions {
                intra_threads: Some(2),
                no_intra_spinning,
                ..Default::default()
            },
        )
        .unwrap();
        gemm_relu_gives_the_reference(
            e.as_ref(),
            &mut rng,
            &[3, 64],
            &format!("spinning off {no_intra_spinning}"),
        );
    }
}
