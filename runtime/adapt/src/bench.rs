//! Speed and memory of one model on one engine: the compiled train step (resident state,
//! fixed random batches) and plain inference at batch 1 (latency) and at a large batch
//! (throughput); peak resident memory of this process read from `/proc/self/status`.

use std::time::Instant;

use fieldtune_engine::Engine;
use fieldtune_graph::{inputs, Target};
use fieldtune_tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::Result;
use crate::model_dir::ModelDir;
use crate::recipe::AdaptConfig;
use crate::session::{train_spec, StepShape, TrainSession};

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Timed train steps (after `warmup` untimed ones).
    pub steps: usize,
    pub warmup: usize,
    /// Inference runs at batch 1.
    pub latency_runs: usize,
    /// Batch of the throughput runs (as many runs as `steps`).
    pub infer_batch: usize,
    /// Time inference only (e.g. on TensorRT, which builds engines per graph).
    pub skip_train: bool,
}

/// Figures of one run. Times in milliseconds; memory in MiB.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub engine: String,
    pub execution_provider: String,
    /// The train step's target (`portable`, or the engine's tuned target).
    pub target: String,
    pub batch_labeled: usize,
    pub batch_unlabeled: usize,
    /// Images through the model per train step: labeled + weak + strong.
    pub images_per_step: usize,
    pub train_step_nodes: usize,
    pub train_step_gflop: f64,
    pub compile_and_load_ms: f64,
    pub train_step_ms_median: f64,
    pub train_step_ms_p90: f64,
    pub train_images_per_s: f64,
    pub train_gflop_per_s: f64,
    /// Peak resident memory after the train steps (process high-water mark).
    pub peak_rss_train_mib: f64,
    /// Loading the inference model (with TensorRT: building or loading its engines).
    pub infer_load_ms: f64,
    pub infer_b1_ms_median: f64,
    pub infer_b1_ms_p99: f64,
    pub infer_batch: usize,
    pub infer_images_per_s: f64,
    pub peak_rss_end_mib: f64,
}

/// The process's peak resident memory (VmHWM) in MiB; 0 where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn random(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::f32(
        shape.to_vec(),
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect(),
    )
    .expect("sized")
}

/// Times the train step of `cfg` and inference of `model` on `engine`.
pub fn bench(
    engine: &dyn Engine,
    model: &ModelDir,
    cfg: &AdaptConfig,
    bc: &BenchConfig,
) -> Result<BenchReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let t0 = Instant::now();
    let mut times = Vec::with_capacity(bc.steps);
    let mut execution_provider = String::new();
    let mut compile_and_load_ms = 0.0;
    let (bl, bu) = (cfg.batch_labeled, cfg.batch_unlabeled);
    let images_per_step = bl + 2 * bu;
    // Compiled even when only inference is timed: the report names the step's size.
    let shape = if bc.skip_train {
        StepShape::of(
            &model.compile_step(&train_spec(model, cfg))?,
            Target::Portable,
        )
    } else {
        let mut session = TrainSession::compile(engine, model, cfg, "train-step")?;
        execution_provider = session.execution_provider().to_string();
        compile_and_load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let [c, h, w] = session.shape().image;
        let xl = random(&mut rng, &[bl, c, h, w]);
        let yl = Tensor::i64(
            vec![bl],
            (0..bl)
                .map(|_| rng.gen_range(0..session.shape().classes as i64))
                .collect(),
        )
        .expect("sized");
        let xw = random(&mut rng, &[bu, c, h, w]);
        let xs = random(&mut rng, &[bu, c, h, w]);
        for k in 0..bc.warmup + bc.steps {
            let mut feeds: Vec<(&str, &Tensor)> =
                vec![(inputs::X_WEAK, &xw), (inputs::X_STRONG, &xs)];
            if bl > 0 {
                feeds.push((inputs::X_LABELED, &xl));
                feeds.push((inputs::Y_LABELED, &yl));
            }
            let ts = Instant::now();
            session.step(&feeds, cfg.lr, k + 1)?;
            if k >= bc.warmup {
                times.push(ts.elapsed().as_secs_f64() * 1e3);
            }
        }
        session.shape().clone()
    };
    let [c, h, w] = shape.image;
    let peak_rss_train_mib = peak_rss_mib();
    // Without train steps the figures stay 0 (JSON has no NaN).
    let med = if times.is_empty() {
        0.0
    } else {
        quantile(&times, 0.5)
    };
    let per_s = |work: f64| if med > 0.0 { work / (med / 1e3) } else { 0.0 };

    // Inference on the model itself (dynamic or fixed batch as exported).
    let tl = Instant::now();
    let mut infer = engine.load(&model.bytes, &model.label(""))?;
    let infer_load_ms = tl.elapsed().as_secs_f64() * 1e3;
    if execution_provider.is_empty() {
        execution_provider = infer.execution_provider().to_string();
    }
    let x1 = random(&mut rng, &[1, c, h, w]);
    let xb = random(&mut rng, &[bc.infer_batch, c, h, w]);
    let (inp, out) = (model.config.input.as_str(), model.config.output.as_str());
    let mut lat = Vec::with_capacity(bc.latency_runs);
    for k in 0..bc.latency_runs + 5 {
        let ts = Instant::now();
        infer.run_fetch(&[(inp, &x1)], &[out])?;
        if k >= 5 {
            lat.push(ts.elapsed().as_secs_f64() * 1e3);
        }
    }
    infer.run_fetch(&[(inp, &xb)], &[out])?;
    let ts = Instant::now();
    let runs = bc.steps.max(1);
    for _ in 0..runs {
        infer.run_fetch(&[(inp, &xb)], &[out])?;
    }
    let infer_images_per_s = (runs * bc.infer_batch) as f64 / ts.elapsed().as_secs_f64();
    Ok(BenchReport {
        engine: format!("{:?}", engine.kind()),
        execution_provider,
        target: shape.target.name().to_string(),
        batch_labeled: bl,
        batch_unlabeled: bu,
        images_per_step,
        train_step_nodes: shape.nodes,
        train_step_gflop: shape.flops as f64 / 1e9,
        compile_and_load_ms,
        train_step_ms_median: med,
        train_step_ms_p90: if times.is_empty() {
            0.0
        } else {
            quantile(&times, 0.9)
        },
        train_images_per_s: per_s(images_per_step as f64),
        train_gflop_per_s: per_s(shape.flops as f64 / 1e9),
        peak_rss_train_mib,
        infer_load_ms,
        infer_b1_ms_median: quantile(&lat, 0.5),
        infer_b1_ms_p99: quantile(&lat, 0.99),
        infer_batch: bc.infer_batch,
        infer_images_per_s,
        peak_rss_end_mib: peak_rss_mib(),
    })
}
