//! `fieldtune demo`: adapts the shipped MNIST CNN to OpenCV digits and reports accuracy
//! before and after; `--rgb` runs the camera-sized RGB demo instead (`demo_rgb.rs`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use fieldtune_adapt::AdaptConfig;

use super::adapt::{run_adapt, RunPaths};
use super::{engine, find_checkout, open_model};
use crate::args::{EngineArgs, NormArgs};

#[derive(Args)]
pub struct DemoArgs {
    /// The camera-sized RGB demo: MobileNetV2 (models/mobilenetv2) adapted with TENT to 20
    /// ImageNet photos under a contrast shift (data/imagenet-samples), on either engine.
    #[arg(long)]
    rgb: bool,
    /// With --rgb: the shifted photos, a folder of data/imagenet-samples other than clean.
    #[arg(
        long,
        requires = "rgb",
        default_value = "contrast-5",
        value_name = "NAME"
    )]
    shift: String,
    /// With --rgb: an adapt settings file (as `fieldtune adapt --config`, e.g.
    /// configs/rgb-colorize.toml) to run instead of TENT; every step still takes all the
    /// shifted photos, and the demo has no labeled anchors.
    #[arg(long, requires = "rgb", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Optimizer steps (default: the uda-im recipe's; with --rgb 20, or the --config file's).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the adapted model (replaced on every run: it may hold only a model
    /// folder's files). Default out/demo, with --rgb out/demo-rgb.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) engine: crate::args::EngineArgs,
}

pub fn run(args: DemoArgs, engine_args: &EngineArgs) -> Result<()> {
    if args.rgb {
        let rgb = super::demo_rgb::RgbDemo {
            shift: &args.shift,
            config: args.config.as_deref(),
            steps: args.steps,
            seed: args.seed,
            out: args.out.as_deref(),
        };
        return super::demo_rgb::run(rgb, engine_args);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out/demo"));
    let root = find_checkout(&["models/mnist-cnn/model.onnx", "data/opencv-digits"]).context("the demo needs the shipped model and data (models/mnist-cnn, data/opencv-digits): run it from the fieldtune checkout")?;
    let model = root.join("models/mnist-cnn");
    let target = root.join("data/opencv-digits");
    println!(
        "demo: adapting {} from MNIST anchors to OpenCV digits ({})",
        model.display(),
        target.display()
    );
    let e = engine(engine_args)?;
    let mut cfg = AdaptConfig::preset("uda-im")?;
    if let Some(s) = args.steps {
        cfg.steps = s;
    }
    cfg.seed = args.seed;
    let m = open_model(&model, &NormArgs::default())?;
    let anchors = model.join("anchors");
    let (before, after) = run_adapt(
        e.as_ref(),
        &m,
        RunPaths {
            labeled: Some(&anchors),
            unlabeled: &target,
            eval: Some(&target),
            out: &out,
            // The demo replaces its own output folder on every run.
            force: true,
            dump_batches: None,
        },
        &cfg,
    )?;
    let (b, a) = (
        before.expect("eval set given"),
        after.expect("eval set given"),
    );
    println!(
        "accuracy on OpenCV digits: before {:.4} -> after {:.4} ({:+.2} points)",
        b.accuracy(),
        a.accuracy(),
        100.0 * (a.accuracy() - b.accuracy())
    );
    Ok(())
}
