//! The `fieldtune` command: wires the crates together; no logic of its own beyond
//! arguments, progress and printing.

mod bench_cmd;
mod board_leds;
mod field_cmd;
mod sd_notify;
mod tta_cmd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fieldtune_adapt::{
    adapt, batches, evaluate, AdaptConfig, AdaptData, BatchMaker, EvalReport, ModelDir, StepReport,
    RECIPES,
};
use fieldtune_engine::{
    doctor_report, select_engine, Engine, EnginePreference, ExecutionProvider, GraphOptimization,
    OrtOptions,
};
use fieldtune_frames::{Dataset, Image8};
use fieldtune_graph::{BatchNormMode, MeanTeacher, Trainable, UdaLoss};

#[derive(Parser)]
#[command(
    name = "fieldtune",
    version,
    about = "Keep a deployed vision classifier learning from the frames it sees.",
    long_about = "fieldtune adapts an ONNX image classifier to the domain it is deployed in, from unlabeled \
frames plus a small labeled anchor set, with UDA consistency training (Xie et al. 2019). It compiles its \
own train-step graphs in standard ONNX ops, so training runs on a stock ONNX Runtime or on tract.\n\n\
A model is a folder: model.onnx plus model.toml (input name and shape, normalisation, class names).\n\
Image folders hold one sub-folder per class (e.g. anchors/0/*.png); an unlabeled folder may be flat.",
    after_help = "Start with `fieldtune demo` (adapts the shipped MNIST CNN to OpenCV digits), then \
`fieldtune adapt --help`."
)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct EngineArgs {
    /// Which engine runs the graphs: ONNX Runtime when its library is found, else tract (auto).
    #[arg(long, global = true, value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
    /// ONNX Runtime library (libonnxruntime.so or its folder). Otherwise: ORT_DYLIB_PATH,
    /// .ort/lib (scripts/install-ort.sh), Python's onnxruntime package, the system.
    #[arg(long, global = true, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Threads per operator: ONNX Runtime's intra-op threads, or the size of tract's thread pool
    /// for matrix products and large elementwise ops (default: one per core).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// ONNX Runtime execution providers in priority order: cpu, cuda[:N], tensorrt[:N]
    /// (e.g. `tensorrt,cuda`). Each must register or the command fails; nodes a provider
    /// cannot run go to the next one. Run `fieldtune doctor` to see what the library has.
    /// (`fieldtune run` takes these settings from its config's [engine] section.)
    #[arg(long, global = true, value_name = "CHAIN", default_value = "cpu")]
    ep: String,
    /// Folder for TensorRT's engine and timing caches (the first run builds engines, which
    /// takes minutes on a Jetson; later runs load them).
    #[arg(long, global = true, value_name = "DIR")]
    trt_cache: Option<PathBuf>,
    /// ONNX Runtime graph optimization level.
    #[arg(long, global = true, value_enum, default_value_t = GraphOpt::All)]
    graph_opt: GraphOpt,
    /// Turn off ONNX Runtime's CPU memory arena (lower resident memory, slower allocation).
    #[arg(long, global = true)]
    no_arena: bool,
    /// Turn on ONNX Runtime's memory pattern (one pre-planned block for all intermediate
    /// tensors; off by default: it makes a train step hold every activation's slot at once).
    #[arg(long, global = true)]
    mem_pattern: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphOpt {
    Disable,
    Basic,
    Extended,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineChoice {
    Auto,
    Ort,
    Tract,
}

#[derive(Subcommand)]
enum Command {
    /// Adapt a model to unlabeled frames; writes an adapted model folder.
    #[command(
        long_about = "Adapt a model to unlabeled frames of a new domain, anchored by a few labeled \
examples of the source domain. Writes --out/model.onnx (the adapted weights as initializers), \
--out/model.toml, --out/checkpoint.safetensors and --out/adapt.json (settings, loss history, accuracy).\n\n\
Recipes (--recipe):\n  uda-im  UDA, identity weak view, mild RandAugment, + information maximisation + anchor CE, 600 steps (default)\n  \
uda     textbook UDA: 2 px shifted weak view, TSA\n  tent    entropy minimisation, no anchors\n  \
fixmatch hard pseudo-labels (confidence > 0.95) for the strong view + anchor CE\n  \
cotta   CoTTA: mean teacher, augmentation-averaged targets, soft CE, stochastic restore; no anchors\n  \
rotation test-time training: rotation prediction with a linear head (not saved); no anchors\n\n\
--objective, --train, --batchnorm and --batch change a recipe from the command line; a bare .onnx \
works as --model with --mean/--std.\n\n\
Every setting can be overridden in a TOML file (--config); --print-config shows them all."
    )]
    Adapt(AdaptArgs),
    /// Accuracy and confusion matrix of a model on a labeled image folder.
    Eval {
        /// Model folder (model.onnx + model.toml), or a bare .onnx file.
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        norm: NormArgs,
        /// Labeled images: one sub-folder per class.
        #[arg(long)]
        data: PathBuf,
        /// Images per inference batch.
        #[arg(long, default_value_t = 250)]
        batch: usize,
    },
    /// Write the train-step graph fieldtune compiles for a model, for inspection (Netron etc.).
    Compile {
        /// Model folder (model.onnx + model.toml), or a bare .onnx file.
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        norm: NormArgs,
        /// Where to write the train-step ONNX.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        recipe: RecipeArgs,
    },
    /// Which engines and execution providers are present, and from where; with --board, how
    /// this machine and its engines compare with a board profile.
    Doctor {
        /// Board profile: a shipped name (jetson-orin-nano-8gb, jetson-orin-nx-16gb,
        /// jetson-agx-orin-64gb, jetson-xavier-nx, x86-cpu, raspberry-pi-5) or a .toml file.
        #[arg(long, value_name = "NAME|PATH")]
        board: Option<String>,
    },
    /// Adapt the shipped MNIST CNN to OpenCV digits and report accuracy before and after.
    Demo {
        /// Optimizer steps (default: the uda-im recipe's).
        #[arg(long)]
        steps: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write the adapted model.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
    },
    /// Serve a model on a frame stream and adapt it in the background (gated, checkpointed).
    #[command(long_about = field_cmd::RUN_ABOUT, after_help = field_cmd::RUN_AFTER)]
    Run(field_cmd::RunArgs),
    /// Draw a run's event log as a PNG (accuracy, entropy, mask rate, latency; commits and
    /// rollbacks marked).
    Report(field_cmd::ReportArgs),
    /// Time the train step and inference of a model on one engine, with peak memory.
    #[command(long_about = bench_cmd::BENCH_ABOUT)]
    Bench(bench_cmd::BenchArgs),
    /// Test-time adaptation over a sequence of domains (e.g. corruptions), per domain with
    /// reset or continual; source, bn, tent, uda, fixmatch, mean teacher.
    #[command(long_about = tta_cmd::TTA_ABOUT)]
    Tta(tta_cmd::TtaArgs),
}

#[derive(Args)]
struct RecipeArgs {
    /// Named starting point for the settings.
    #[arg(long, default_value = "uda-im", value_parser = recipe_names())]
    recipe: String,
    /// TOML file overriding any setting (its own `recipe` key wins over --recipe).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Seed for sampling and augmentation.
    #[arg(long)]
    seed: Option<u64>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f32>,
    /// Labeled anchors per step.
    #[arg(long)]
    batch_labeled: Option<usize>,
    /// Unlabeled frames per step.
    #[arg(long)]
    batch_unlabeled: Option<usize>,
    /// Batch size in one number: N unlabeled frames and N/2 labeled anchors per step (when the
    /// recipe uses anchors). --batch-labeled / --batch-unlabeled win over it.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// What trains: all, bn (BatchNorm scale and bias, TENT-style), head (the last block),
    /// last:K (the last K blocks; a block is a parameter name up to its first numeric part,
    /// e.g. features.17), or comma-separated name globs (e.g. 'fc*,*.bias').
    #[arg(long, value_name = "SELECTION", value_parser = parse_trainable)]
    train: Option<Trainable>,
    /// The unlabeled objective, replacing the recipe's loss terms: uda (masked, sharpened KL
    /// consistency + anchor CE), tent (prediction entropy only; no anchors), fixmatch (hard
    /// pseudo-labels above 0.95 on the strong view + anchor CE), teacher (uda with targets
    /// from a mean teacher, EMA 0.999, updated inside the train step; the teacher is the
    /// adapted model), cotta (CoTTA: mean teacher, EMA 0.999, whose targets are averaged over
    /// 4 mildly augmented views where its confidence is below 0.9, soft cross-entropy on the
    /// unaugmented frames, stochastic restore of 1% of the weights to the source model per
    /// step; no anchors), rotation (test-time training: predict the rotation, 0/90/180/270
    /// degrees, of each frame with a linear head on the classifier's input; square images;
    /// no anchors; the head is not saved).
    #[arg(long, value_enum)]
    objective: Option<Objective>,
    /// BatchNorm while adapting: train (batch statistics, running statistics updated) or
    /// frozen (running statistics).
    #[arg(long, value_enum)]
    batchnorm: Option<BnArg>,
}

/// Input normalisation for a bare .onnx model (or to override model.toml's).
#[derive(Args, Clone, Debug, Default)]
struct NormArgs {
    /// Per-channel mean subtracted after scaling pixels to 0..1 (one value, or one per
    /// channel, comma-separated). Default for a bare .onnx: none (0).
    #[arg(long, value_delimiter = ',', requires = "std")]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation divided by (default for a bare .onnx: none, 1).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    std: Option<Vec<f32>>,
}

impl NormArgs {
    fn pair(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        self.mean.clone().zip(self.std.clone())
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Objective {
    Uda,
    Tent,
    Fixmatch,
    Teacher,
    Cotta,
    Rotation,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BnArg {
    Train,
    Frozen,
}

fn parse_trainable(s: &str) -> std::result::Result<Trainable, String> {
    Trainable::parse(s)
}

fn recipe_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(RECIPES.iter().map(|r| r.0))
}

impl RecipeArgs {
    fn resolve(&self) -> Result<AdaptConfig> {
        let mut cfg = match &self.config {
            Some(p) => AdaptConfig::load(p)?,
            None => AdaptConfig::preset(&self.recipe)?,
        };
        if let Some(v) = self.steps {
            cfg.steps = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.lr {
            cfg.lr = v;
        }
        if let Some(o) = self.objective {
            let ce = if matches!(o, Objective::Tent | Objective::Cotta | Objective::Rotation) {
                0.0
            } else {
                1.0
            };
            let consistency = matches!(o, Objective::Uda | Objective::Teacher);
            cfg.loss = UdaLoss {
                ce_weight: ce,
                consistency_weight: if consistency { 1.0 } else { 0.0 },
                entropy_weight: match o {
                    Objective::Tent => 1.0,
                    Objective::Uda | Objective::Teacher => cfg.loss.entropy_weight,
                    Objective::Fixmatch | Objective::Cotta | Objective::Rotation => 0.0,
                },
                diversity_weight: if consistency {
                    cfg.loss.diversity_weight
                } else {
                    0.0
                },
                pseudo_label_weight: if matches!(o, Objective::Fixmatch) {
                    1.0
                } else {
                    0.0
                },
                ..cfg.loss.clone()
            };
            if ce == 0.0 {
                cfg.batch_labeled = 0;
            }
            cfg.teacher = matches!(o, Objective::Teacher | Objective::Cotta)
                .then_some(MeanTeacher { ema: 0.999 });
            cfg.cotta = match o {
                Objective::Cotta => Some(cfg.cotta.unwrap_or_default()),
                _ => None,
            };
            if matches!(o, Objective::Cotta) {
                // CoTTA's student sees the frames themselves.
                cfg.strong = fieldtune_adapt::recipe::AugmentConfig::Identity;
            }
            cfg.rotation = match o {
                Objective::Rotation => Some(cfg.rotation.clone().unwrap_or_default()),
                _ => None,
            };
        }
        if let Some(n) = self.batch {
            cfg.batch_unlabeled = n;
            if cfg.batch_labeled > 0 {
                cfg.batch_labeled = (n / 2).max(1);
            }
        }
        if let Some(v) = self.batch_labeled {
            cfg.batch_labeled = v;
        }
        if let Some(v) = self.batch_unlabeled {
            cfg.batch_unlabeled = v;
        }
        if let Some(t) = &self.train {
            cfg.trainable = t.clone();
        }
        if let Some(b) = self.batchnorm {
            cfg.batchnorm = match b {
                BnArg::Train => BatchNormMode::Train,
                BnArg::Frozen => BatchNormMode::Frozen,
            };
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args)]
struct AdaptArgs {
    /// Model folder (model.onnx + model.toml), or a bare .onnx file (input shape from the
    /// graph, classes 0..K-1, normalisation from --mean/--std).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    norm: NormArgs,
    /// Labeled anchors of the source domain: one sub-folder per class.
    #[arg(long)]
    labeled: Option<PathBuf>,
    /// Unlabeled frames of the target domain (flat, or class folders whose names are ignored
    /// for training).
    #[arg(long)]
    unlabeled: PathBuf,
    /// Output model folder.
    #[arg(long)]
    out: PathBuf,
    /// Labeled images to score before and after (and every eval_every steps).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Print the resolved settings as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Also write every step's batch (x_labeled, y_labeled, x_weak, x_strong) to
    /// DIR/step-NNNNN.safetensors, e.g. to feed a reference trainer the very same batches.
    #[arg(long, value_name = "DIR")]
    dump_batches: Option<PathBuf>,
    #[command(flatten)]
    recipe: RecipeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes whose text the line already holds
/// (the library errors name their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg.replace('\n', " ")
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,fieldtune={level},fieldtune_adapt={level},fieldtune_field={level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn engine(args: &EngineArgs) -> Result<Box<dyn Engine>> {
    let pref = match args.engine {
        EngineChoice::Auto => EnginePreference::Auto,
        EngineChoice::Ort => EnginePreference::Ort,
        EngineChoice::Tract => EnginePreference::Tract,
    };
    let opts = OrtOptions {
        lib: args.ort_lib.clone(),
        intra_threads: args.threads,
        providers: ExecutionProvider::parse_chain(&args.ep, args.trt_cache.as_deref())
            .map_err(anyhow::Error::msg)
            .context("--ep")?,
        graph_optimization: match args.graph_opt {
            GraphOpt::Disable => GraphOptimization::Disable,
            GraphOpt::Basic => GraphOptimization::Basic,
            GraphOpt::Extended => GraphOptimization::Extended,
            GraphOpt::All => GraphOptimization::All,
        },
        no_cpu_arena: args.no_arena,
        memory_pattern: args.mem_pattern,
    };
    let e = select_engine(pref, opts).context("selecting the engine")?;
    let why = match (args.engine, e.kind()) {
        (EngineChoice::Auto, fieldtune_engine::EngineKind::Tract) => {
            " (ONNX Runtime not found: run scripts/install-ort.sh, or pass --ort-lib; `fieldtune doctor` lists where it looked)"
        }
        (EngineChoice::Auto, _) => " (auto: ONNX Runtime found)",
        _ => " (requested)",
    };
    println!("engine: {}{why}", e.describe());
    Ok(e)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => field_cmd::run(a, &cli.engine),
        Command::Report(a) => field_cmd::report(a),
        Command::Bench(a) => bench_cmd::run(a, &cli.engine),
        Command::Tta(a) => tta_cmd::run(a, &cli.engine),
        Command::Doctor { board } => {
            use fieldtune_board_profile::{check_engines, check_host, Level, Profile};
            // A bad profile fails before anything is printed.
            let profile = board.as_deref().map(Profile::load).transpose()?;
            let report = doctor_report(cli.engine.ort_lib.as_deref());
            println!("{report}");
            if let Some(profile) = profile {
                let b = &profile.board;
                println!("board {}: {}", b.name, b.description);
                let mut findings = check_host(&profile);
                findings.extend(check_engines(
                    &profile,
                    report.ort.is_ok(),
                    &report.execution_providers,
                ));
                for f in &findings {
                    println!("  {f}");
                }
                let differ = findings
                    .iter()
                    .filter(|f| f.level == Level::Differs)
                    .count();
                println!(
                    "  {differ} of {} checks differ from the profile",
                    findings.len()
                );
            }
            Ok(())
        }
        Command::Eval {
            model,
            norm,
            data,
            batch,
        } => {
            let m = open_model(&model, &norm)?;
            let (images, labels) = load_labeled(&data, &m)?;
            let e = engine(&cli.engine)?;
            let report = eval_model(e.as_ref(), &m, None, &images, &labels, batch)?;
            print_eval(&data, &report);
            Ok(())
        }
        Command::Compile {
            model,
            norm,
            out,
            recipe,
        } => {
            let m = open_model(&model, &norm)?;
            let cfg = recipe.resolve()?;
            let step = fieldtune_graph::compile_train_step(
                &m.model,
                &fieldtune_adapt::train_spec(&m, &cfg),
            )?;
            let bytes = fieldtune_graph::encode_model(&step.to_model());
            fieldtune_adapt::fsutil::atomic_write(&out, &bytes)?;
            println!("wrote {} ({} bytes)", out.display(), bytes.len());
            println!(
                "nodes: {}; {:.3} GFLOP per step (multiply-adds of Conv, ConvTranspose, Gemm, MatMul)",
                step.graph.nodes.len(),
                step.flops as f64 / 1e9
            );
            println!(
                "trainable parameters ({:?}): {} tensors, {} values",
                cfg.trainable,
                step.params.len(),
                step.params.iter().map(|p| p.1.len()).sum::<usize>()
            );
            let frozen = match step.frozen.len() {
                0 => "none".to_string(),
                n if n <= 8 => step.frozen.join(", "),
                n => format!("{n} tensors ({}, ...)", step.frozen[..4].join(", ")),
            };
            println!(
                "optimizer state: {} tensors; BatchNorm {:?}, {} running statistics updated; frozen: {frozen}",
                step.state.len(),
                cfg.batchnorm,
                step.buffers.len()
            );
            let looped: std::collections::HashSet<String> =
                step.loops().into_iter().map(|(_, input)| input).collect();
            let per_step: Vec<String> = step
                .graph
                .inputs
                .iter()
                .filter(|i| !looped.contains(&i.name))
                .map(|i| {
                    let dims: Vec<String> = i
                        .dims
                        .iter()
                        .map(|d| match d {
                            fieldtune_graph::ir::Dim::Fixed(n) => n.to_string(),
                            fieldtune_graph::ir::Dim::Symbolic(s) => s.clone(),
                        })
                        .collect();
                    format!("{} [{}]", i.name, dims.join(", "))
                })
                .collect();
            println!("inputs per step: {}", per_step.join(", "));
            println!("looped inputs (new.<name> -> <name>): {}", looped.len());
            println!("metrics: {}", step.metrics.join(", "));
            Ok(())
        }
        Command::Adapt(a) => {
            let cfg = a.recipe.resolve()?;
            if a.print_config {
                print!("{}", cfg.to_toml());
                return Ok(());
            }
            let m = open_model(&a.model, &a.norm)?;
            let e = engine(&cli.engine)?;
            run_adapt(
                e.as_ref(),
                &m,
                RunPaths {
                    labeled: a.labeled.as_deref(),
                    unlabeled: &a.unlabeled,
                    eval: a.eval.as_deref(),
                    out: &a.out,
                    dump_batches: a.dump_batches.as_deref(),
                },
                &cfg,
            )
            .map(|_| ())
        }
        Command::Demo { steps, seed, out } => {
            let root = find_repo().context("the demo needs the shipped model and data (models/mnist-cnn, data/opencv-digits): run it from the fieldtune checkout")?;
            let model = root.join("models/mnist-cnn");
            let target = root.join("data/opencv-digits");
            println!(
                "demo: adapting {} from MNIST anchors to OpenCV digits ({})",
                model.display(),
                target.display()
            );
            let e = engine(&cli.engine)?;
            let mut cfg = AdaptConfig::preset("uda-im")?;
            if let Some(s) = steps {
                cfg.steps = s;
            }
            cfg.seed = seed;
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
    }
}

fn open_model(path: &Path, norm: &NormArgs) -> Result<ModelDir> {
    ModelDir::open_path(path, norm.pair())
        .with_context(|| format!("opening model {}", path.display()))
}

fn load_labeled(dir: &Path, m: &ModelDir) -> Result<(Vec<Image8>, Vec<usize>)> {
    let ds = Dataset::labeled(dir, &m.config.classes)?;
    let images = ds.load_all(&m.config)?;
    let labels = ds
        .labels()
        .into_iter()
        .map(|l| l.expect("labeled dataset"))
        .collect();
    Ok((images, labels))
}

fn eval_model(
    e: &dyn Engine,
    m: &ModelDir,
    params: Option<&HashMap<String, fieldtune_tensor::Tensor>>,
    images: &[Image8],
    labels: &[usize],
    batch: usize,
) -> Result<EvalReport> {
    let bytes = match params {
        Some(p) => m.with_params(p)?,
        None => m.bytes.clone(),
    };
    let mut s = e.load(&bytes, "model.onnx")?;
    Ok(evaluate(s.as_mut(), &m.config, images, labels, batch)?)
}

fn print_eval(data: &Path, r: &EvalReport) {
    println!("images: {} ({})", r.count, data.display());
    println!("accuracy: {:.4}", r.accuracy());
    println!("mean confidence: {:.4}", r.mean_confidence);
    println!("confusion matrix:\n{}", r.confusion_table());
}

type EvalPair = (Option<EvalReport>, Option<EvalReport>);

/// The folders one adaptation run reads and writes.
struct RunPaths<'a> {
    labeled: Option<&'a Path>,
    unlabeled: &'a Path,
    eval: Option<&'a Path>,
    out: &'a Path,
    /// Where to write each step's batch, if anywhere.
    dump_batches: Option<&'a Path>,
}

fn run_adapt(
    e: &dyn Engine,
    m: &ModelDir,
    paths: RunPaths<'_>,
    cfg: &AdaptConfig,
) -> Result<EvalPair> {
    let RunPaths {
        labeled,
        unlabeled,
        eval,
        out,
        dump_batches,
    } = paths;
    let (lab_imgs, labels) = match labeled {
        Some(d) => load_labeled(d, m)
            .with_context(|| format!("loading labeled anchors from {}", d.display()))?,
        None if cfg.batch_labeled > 0 => bail!(
            "recipe '{}' trains on labeled anchors: give --labeled DIR (or use --recipe tent)",
            cfg.recipe
        ),
        None => (Vec::new(), Vec::new()),
    };
    let ds = Dataset::unlabeled(unlabeled, Some(&m.config.classes))?;
    let unl = ds
        .load_all(&m.config)
        .with_context(|| format!("loading unlabeled frames from {}", unlabeled.display()))?;
    let evalset = match eval {
        Some(d) => Some(
            load_labeled(d, m)
                .with_context(|| format!("loading the eval set from {}", d.display()))?,
        ),
        None => None,
    };
    println!(
        "data: {} labeled anchors (using at most {} per class), {} unlabeled frames{}",
        lab_imgs.len(),
        cfg.max_labeled_per_class,
        unl.len(),
        evalset
            .as_ref()
            .map(|(i, _)| format!(", {} eval images", i.len()))
            .unwrap_or_default()
    );
    let before = match &evalset {
        Some((i, l)) => {
            let r = eval_model(e, m, None, i, l, cfg.eval_batch)?;
            println!(
                "before: accuracy {:.4}, mean confidence {:.4}",
                r.accuracy(),
                r.mean_confidence
            );
            Some(r)
        }
        None => None,
    };
    let bar = indicatif::ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} adapt [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let log_every = cfg.log_every.max(1);
    let mut observer = |r: &StepReport| {
        bar.inc(1);
        let loss = r.metric("loss").unwrap_or(f32::NAN);
        bar.set_message(format!(
            "loss {loss:.4} mask {:.2}",
            r.metric("mask_rate").unwrap_or(0.0)
        ));
        if r.step.is_multiple_of(log_every) {
            let terms: Vec<String> = r
                .metrics
                .iter()
                .map(|(n, v)| format!("{n}={v:.4}"))
                .collect();
            let acc = r
                .eval
                .as_ref()
                .map(|e| format!(" accuracy={:.4}", e.accuracy()))
                .unwrap_or_default();
            bar.suspend(|| tracing::info!("step {}: {}{acc}", r.step, terms.join(" ")));
        }
    };
    let data = AdaptData {
        labeled: &lab_imgs,
        labels: &labels,
        unlabeled: &unl,
        eval: evalset.as_ref().map(|(i, l)| (i.as_slice(), l.as_slice())),
    };
    if let Some(dir) = dump_batches {
        batches::dump(BatchMaker::new(&m.config, cfg, &data)?, cfg.steps, dir)?;
        println!("batches: {} steps written to {}", cfg.steps, dir.display());
    }
    let outcome = adapt(e, m, cfg, &data, &mut observer)?;
    bar.finish_and_clear();
    println!(
        "adapted: {} steps in {:.1} s ({:.1} ms/step) on {} ({} train-step nodes)",
        cfg.steps,
        outcome.seconds,
        1000.0 * outcome.seconds / cfg.steps as f64,
        outcome.execution_provider,
        outcome.train_step_nodes
    );
    let after = match &evalset {
        Some((i, l)) => {
            let r = eval_model(e, m, Some(&outcome.params), i, l, cfg.eval_batch)?;
            println!(
                "after:  accuracy {:.4}, mean confidence {:.4}",
                r.accuracy(),
                r.mean_confidence
            );
            Some(r)
        }
        None => None,
    };
    let meta = HashMap::from([
        ("recipe".to_string(), cfg.recipe.clone()),
        ("steps".to_string(), cfg.steps.to_string()),
        ("seed".to_string(), cfg.seed.to_string()),
        ("engine".to_string(), e.describe()),
    ]);
    m.write_adapted(out, &outcome.params, &meta)?;
    let summary = serde_json::json!({
        "settings": serde_json::to_value(cfg)?,
        "engine": e.describe(),
        "execution_provider": outcome.execution_provider,
        "seconds": outcome.seconds,
        "accuracy_before": before.as_ref().map(|r| r.accuracy()),
        "accuracy_after": after.as_ref().map(|r| r.accuracy()),
        "history": outcome.history.iter().map(|r| {
            let mut o = serde_json::Map::new();
            o.insert("step".into(), r.step.into());
            for (n, v) in &r.metrics { o.insert(n.clone(), serde_json::json!(v)); }
            if let Some(e) = &r.eval { o.insert("accuracy".into(), e.accuracy().into()); }
            serde_json::Value::Object(o)
        }).collect::<Vec<_>>(),
    });
    fieldtune_adapt::fsutil::atomic_write(
        &out.join("adapt.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    println!(
        "wrote {} (model.onnx, model.toml, checkpoint.safetensors, adapt.json)",
        out.display()
    );
    Ok((before, after))
}

/// The fieldtune checkout: the current folder or an ancestor (of it or of the executable)
/// holding models/mnist-cnn.
fn find_repo() -> Option<PathBuf> {
    let mut starts = vec![std::env::current_dir().ok()?];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    for s in starts {
        for dir in s.ancestors() {
            if dir.join("models/mnist-cnn/model.onnx").is_file()
                && dir.join("data/opencv-digits").is_dir()
            {
                return Some(dir.to_path_buf());
            }
        }
    }
    None
}
