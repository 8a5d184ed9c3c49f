//! `fieldtune tta`: online test-time adaptation over a sequence of domains (arguments, data
//! loading, progress and printing; the protocol is fieldtune_adapt::tta).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use fieldtune_adapt::tta::{self, Domain, Method, Setting, TtaOptions, TtaRun};
use fieldtune_adapt::AdaptConfig;

use super::{engine, load_labeled, open_model};
use crate::args::{EngineArgs, NormArgs};

/// The 15 standard ImageNet-C corruptions, in the usual order.
pub const CORRUPTIONS: [&str; 15] = [
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
];

pub const TTA_ABOUT: &str = "Online test-time adaptation over a sequence of domains (e.g. the 15 \
corruptions of Fashion-MNIST-C). Each domain's images arrive in a seeded order, in batches of \
--batch: every batch is first predicted with the current weights (that prediction is scored), then \
one train step is taken on that same batch.\n\n\
Methods (--methods):\n  source    the model as shipped, no adaptation\n  \
bn        BatchNorm normalises with the test batch's statistics; no parameter update\n  \
tent      + entropy minimisation of the predictions, BatchNorm scale/bias, Adam lr 1e-3\n  \
uda       + UDA consistency (identity weak view, mild RandAugment strong view, mask 0.9) + \
information maximisation + cross-entropy on 16 labeled anchors per step\n  \
fixmatch  + hard pseudo-labels above 0.95 for the strong view + anchor cross-entropy\n  \
teacher   uda with targets and predictions from a mean teacher (EMA 0.99)\n  \
cotta     CoTTA: soft cross-entropy against a mean teacher (EMA 0.99) averaged over 4 augmented views \
when unsure, 1% of the weights restored to the source per step; no anchors (not in the default list)\n\
`--print-config METHOD` prints a method's full settings; `--method-config METHOD=FILE` overrides them, \
`--method-config METHOD:LABEL=FILE` adds a row `METHOD:LABEL` with the method's settings under the file's \
(e.g. `tent:jigsaw=configs/tta-jigsaw.toml`).\n\n\
Settings (--settings): reset (each domain starts from the source weights and a fresh optimizer) and \
continual (no reset; errors compound, collapse shows).\n\n\
Data: --data DIR holds one labeled image folder per domain (DIR/<domain>/<class>/*.png); --domains \
lists them in order, or --severity N takes the 15 standard corruptions <name>-N (as written by \
scripts/data/corrupt_fmnist.py).";

#[derive(Args)]
pub struct TtaArgs {
    /// Model folder (model.onnx + model.toml), or a .onnx file: read as the model.toml
    /// beside it says; without one, input shape from the graph, classes 0..K-1, and
    /// --mean/--std or --raw-input.
    #[arg(long, required_unless_present = "print_config")]
    model: Option<PathBuf>,
    #[command(flatten)]
    norm: NormArgs,
    /// Folder holding one labeled image folder per domain.
    #[arg(long, required_unless_present = "print_config")]
    data: Option<PathBuf>,
    /// Domain folders under --data, in stream order (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "severity")]
    domains: Option<Vec<String>>,
    /// The 15 standard corruptions at this severity: domains <corruption>-N in the usual order.
    #[arg(long, value_name = "N")]
    severity: Option<u32>,
    /// Use at most this many images of each domain, evenly spread over its files.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Labeled anchors for uda, fixmatch and teacher (default: MODEL/anchors).
    #[arg(long)]
    anchors: Option<PathBuf>,
    /// Methods to run (comma-separated): source, bn, tent, uda, fixmatch, teacher, cotta.
    #[arg(long, value_delimiter = ',', default_value = "source,bn,tent,uda,fixmatch,teacher",
          value_parser = parse_method)]
    methods: Vec<Method>,
    /// Settings to run (comma-separated): reset, continual.
    #[arg(long, value_delimiter = ',', default_value = "reset,continual", value_parser = parse_setting)]
    settings: Vec<Setting>,
    /// Seeds (comma-separated): stream order, anchor sampling and augmentation.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Images per test batch (and per train step).
    #[arg(long, default_value_t = 64, value_parser = crate::args::batch_parser())]
    batch: usize,
    /// Override a method's settings with a TOML file (repeatable): METHOD=FILE. The file is a
    /// full settings file as `--print-config METHOD` writes it, or a part of one.
    /// METHOD:LABEL=FILE instead adds a row named METHOD:LABEL (after METHOD's own, when METHOD
    /// is in --methods) with the method's preset under the file's keys.
    #[arg(long, value_name = "METHOD[:LABEL]=FILE")]
    method_config: Vec<String>,
    /// Print a method's train-step settings as TOML and exit.
    #[arg(long, value_name = "METHOD", value_parser = parse_method)]
    print_config: Option<Method>,
    /// Write every step's batch to DIR/<row>/seed-<S>/<NN>-<domain>/step-<K>.safetensors
    /// (x_test, y_test and the train-step inputs) plus settings.json (and heads.safetensors
    /// when the settings have pretext heads), for scripts/reference/torch_tta.py.
    #[arg(long, value_name = "DIR")]
    dump_batches: Option<PathBuf>,
    /// Write all results as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) engine: crate::args::EngineArgs,
}

fn parse_method(s: &str) -> std::result::Result<Method, String> {
    Method::parse(s).ok_or_else(|| {
        format!(
            "unknown method '{s}'; known: {}",
            Method::ALL.map(|m| m.name()).join(", ")
        )
    })
}

fn parse_setting(s: &str) -> std::result::Result<Setting, String> {
    match s {
        "reset" => Ok(Setting::Reset),
        "continual" => Ok(Setting::Continual),
        _ => Err(format!("unknown setting '{s}'; known: reset, continual")),
    }
}

/// A method's settings: its preset, with a --method-config file's keys over it.
fn method_settings(m: Method, files: &HashMap<Method, PathBuf>) -> Result<Option<AdaptConfig>> {
    match files.get(&m) {
        None => Ok(m.preset()),
        Some(path) => Ok(Some(tta::settings_from_file(m, path)?)),
    }
}

/// One row of results: a method with its settings under a name.
struct Row {
    name: String,
    method: Method,
    settings: Option<AdaptConfig>,
}

/// The --method-config arguments: METHOD=FILE overrides (one per method) and, in order,
/// the labelled variants METHOD:LABEL=FILE.
type MethodConfigs = (HashMap<Method, PathBuf>, Vec<(String, Method, PathBuf)>);

fn parse_method_configs(specs: &[String]) -> Result<MethodConfigs> {
    let (mut files, mut variants) = (HashMap::new(), Vec::new());
    for spec in specs {
        let (name, f) = spec.split_once('=').with_context(|| {
            format!("--method-config '{spec}': expected METHOD=FILE or METHOD:LABEL=FILE")
        })?;
        let (m, label) = match name.split_once(':') {
            Some((m, l)) => (m, Some(l)),
            None => (name, None),
        };
        let method = parse_method(m).map_err(anyhow::Error::msg)?;
        match label {
            None => {
                files.insert(method, PathBuf::from(f));
            }
            Some(l) if l.is_empty() || l.contains(['/', '\\', ',']) => {
                bail!("--method-config '{spec}': the label '{l}' must be non-empty, without '/', '\\' or ','")
            }
            Some(_)
                if variants
                    .iter()
                    .any(|v: &(String, Method, PathBuf)| v.0 == name) =>
            {
                bail!("--method-config '{spec}': the row '{name}' is given twice")
            }
            Some(_) => variants.push((name.to_string(), method, PathBuf::from(f))),
        }
    }
    Ok((files, variants))
}

/// The rows to run: each method of --methods (its preset or override), each followed by its
/// labelled variants.
fn rows(methods: &[Method], configs: &MethodConfigs) -> Result<Vec<Row>> {
    let (files, variants) = configs;
    let mut out = Vec::new();
    for &m in methods {
        out.push(Row {
            name: m.name().to_string(),
            method: m,
            settings: method_settings(m, files)?,
        });
        for (name, _, path) in variants.iter().filter(|v| v.1 == m) {
            out.push(Row {
                name: name.clone(),
                method: m,
                settings: Some(tta::settings_from_file(m, path)?),
            });
        }
    }
    Ok(out)
}

/// Every domain folder exists, or an error that says how to make them: the corruption
/// folders of `--severity` come from scripts/data/corrupt_fmnist.py (Fashion-MNIST-C is not
/// shipped); other names are listed against the folders that are there.
fn check_domains(data: &Path, names: &[String], severity: Option<u32>) -> Result<()> {
    let missing: Vec<&String> = names.iter().filter(|n| !data.join(n).is_dir()).collect();
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let mut present: Vec<String> = std::fs::read_dir(data)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    present.sort();
    let there = match present.len() {
        0 => format!("{} holds no domain folders", data.display()),
        n if n <= 8 => format!("{} holds: {}", data.display(), present.join(", ")),
        n => format!(
            "{} holds {n} folders: {}, ...",
            data.display(),
            present[..8].join(", ")
        ),
    };
    let how = match severity {
        Some(s) => format!(
            "--severity {s} reads the 15 corruption folders <corruption>-{s}, which \
             scripts/data/corrupt_fmnist.py writes to data/fmnist-c (Fashion-MNIST-C is not \
             shipped: data/fmnist-c/DATA.md says how to make it, about 5 minutes)"
        ),
        None => "--domains names folders under --data".to_string(),
    };
    bail!(
        "{}: no such domain folder ({} of {} missing); {there}. {how}",
        data.join(first).display(),
        missing.len(),
        names.len()
    )
}

fn load_domains(
    data: &Path,
    names: &[String],
    m: &fieldtune_adapt::ModelDir,
    limit: Option<usize>,
) -> Result<Vec<Domain>> {
    names
        .iter()
        .map(|n| {
            let dir = data.join(n);
            let (mut images, mut labels) = load_labeled(&dir, m)
                .with_context(|| format!("loading domain '{n}' from {}", dir.display()))?;
            if let Some(l) = limit.filter(|&l| l < images.len()) {
                // Evenly spread over the folder order (class folders come one after another).
                let n = images.len();
                let pick: Vec<usize> = (0..l).map(|i| i * n / l).collect();
                images = pick.iter().map(|&i| images[i].clone()).collect();
                labels = pick.iter().map(|&i| labels[i]).collect();
            }
            Ok(Domain {
                name: n.clone(),
                images,
                labels,
            })
        })
        .collect()
}

pub fn run(a: TtaArgs, engine_args: &EngineArgs) -> Result<()> {
    let configs = parse_method_configs(&a.method_config)?;
    if let Some(m) = a.print_config {
        match method_settings(m, &configs.0)? {
            Some(c) => print!("{}", c.to_toml()),
            None => println!("# method '{}' trains nothing", m.name()),
        }
        return Ok(());
    }
    let model_path = a.model.as_deref().expect("clap requires --model");
    let data = a.data.as_deref().expect("clap requires --data");
    let m = open_model(model_path, &a.norm)?;
    let names: Vec<String> = match (&a.domains, a.severity) {
        (Some(d), _) => d.clone(),
        (None, Some(s)) => CORRUPTIONS.iter().map(|c| format!("{c}-{s}")).collect(),
        (None, None) => bail!("give --domains or --severity"),
    };
    check_domains(data, &names, a.severity)?;
    let domains = load_domains(data, &names, &m, a.limit)?;
    let rows = rows(&a.methods, &configs)?;
    let needs_anchors = rows
        .iter()
        .any(|r| r.settings.as_ref().is_some_and(|c| c.batch_labeled > 0));
    let (anchors, anchor_labels) = if needs_anchors {
        let dir = a
            .anchors
            .clone()
            .unwrap_or_else(|| model_path.join("anchors"));
        load_labeled(&dir, &m).with_context(|| {
            format!("loading labeled anchors from {} (--anchors)", dir.display())
        })?
    } else {
        (Vec::new(), Vec::new())
    };
    let e = engine(engine_args)?;
    let per_domain: Vec<usize> = domains.iter().map(|d| d.images.len() / a.batch).collect();
    println!(
        "data: {} domains ({}), {} images each; batch {}; {} anchors",
        domains.len(),
        names.join(", "),
        domains.first().map_or(0, |d| d.images.len()),
        a.batch,
        anchors.len()
    );
    let total: usize =
        per_domain.iter().sum::<usize>() * rows.len() * a.settings.len() * a.seeds.len();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} tta [{bar:30}] {pos}/{len} batches {per_sec} eta {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let mut runs: Vec<TtaRun> = Vec::new();
    for &seed in &a.seeds {
        for row in &rows {
            let (method, cfg) = (row.method, row.settings.as_ref());
            for (si, &setting) in a.settings.iter().enumerate() {
                bar.set_message(format!("{} {} seed {seed}", row.name, setting.name()));
                // The batches do not depend on the setting: dump them once.
                let dump = a
                    .dump_batches
                    .as_ref()
                    .filter(|_| si == 0)
                    .map(|d| d.join(&row.name).join(format!("seed-{seed}")));
                if let Some(d) = &dump {
                    tta::write_dump_settings(d, &row.name, method, cfg, a.batch, seed, &domains)?;
                }
                let opts = TtaOptions {
                    name: &row.name,
                    batch: a.batch,
                    seed,
                    anchors: &anchors,
                    anchor_labels: &anchor_labels,
                    dump: dump.as_deref(),
                };
                let r = tta::run(
                    e.as_ref(),
                    &m,
                    method,
                    cfg,
                    setting,
                    &domains,
                    &opts,
                    &mut || bar.inc(1),
                )
                .with_context(|| format!("tta {} {} seed {seed}", row.name, setting.name()))?;
                bar.suspend(|| {
                    tracing::info!(
                        "{} {} seed {seed}: mean error {:.2}% ({:.1} s)",
                        row.name,
                        setting.name(),
                        r.mean_error,
                        r.seconds
                    )
                });
                runs.push(r);
            }
        }
    }
    bar.finish_and_clear();
    let row_names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    print_table(&runs, &row_names, &a.settings, &names);
    if let Some(out) = &a.out {
        let v = serde_json::json!({
            "model": model_path,
            "data": data,
            "engine": e.describe(),
            "batch": a.batch,
            "domains": names,
            "images_per_domain": domains.first().map_or(0, |d| d.images.len()),
            "runs": runs,
        });
        fieldtune_adapt::fsutil::atomic_write(out, serde_json::to_string_pretty(&v)?.as_bytes())?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, s)
}

fn print_table(runs: &[TtaRun], rows: &[&str], settings: &[Setting], names: &[String]) {
    println!(
        "\nmean error over {} domains, % (mean +- std over seeds)",
        names.len()
    );
    let w = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(10);
    print!("{:<w$}", "method");
    for s in settings {
        print!(" {:>16}", s.name());
    }
    println!();
    for &m in rows {
        print!("{m:<w$}");
        for &s in settings {
            let v: Vec<f64> = runs
                .iter()
                .filter(|r| r.name == m && r.setting == s)
                .map(|r| r.mean_error)
                .collect();
            let (mu, sd) = mean_std(&v);
            print!(" {:>16}", format!("{mu:.2} +- {sd:.2}"));
        }
        println!();
    }
    println!("\nper domain, % (mean over seeds)");
    print!("{:<22}", "domain");
    let cols: Vec<String> = rows
        .iter()
        .flat_map(|m| {
            settings
                .iter()
                .map(move |s| format!("{m}/{}", &s.name()[..1]))
        })
        .collect();
    for c in &cols {
        print!(" {c:>9}");
    }
    println!();
    for (i, n) in names.iter().enumerate() {
        print!("{:<22}", n);
        let mut c = cols.iter();
        for &m in rows {
            for &s in settings {
                let v: Vec<f64> = runs
                    .iter()
                    .filter(|r| r.name == m && r.setting == s)
                    .filter_map(|r| r.domains.get(i).map(|d| d.error))
                    .collect();
                let w = c.next().map_or(9, |c| c.len().max(9));
                print!(" {:>w$.2}", mean_std(&v).0);
            }
        }
        println!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn labelled_method_configs_add_rows_after_their_method() {
        let d = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let (j, lr, ip) = (
            file("j.toml", "[jigsaw]\nweight = 1.0\n"),
            file("lr.toml", "lr = 0.05\n"),
            file("i.toml", "[inpaint]\nweight = 1.0\n"),
        );
        let c = parse_method_configs(&specs(&[
            &format!("uda:jigsaw={j}"),
            &format!("tent={lr}"),
            &format!("tent:inpaint={ip}"),
            &format!("fixmatch:x={j}"),
        ]))
        .unwrap();
        let r = rows(&[Method::Bn, Method::Tent, Method::Uda], &c).unwrap();
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        // A variant follows its method, and only when its method runs (no fixmatch:x).
        assert_eq!(names, ["bn", "tent", "tent:inpaint", "uda", "uda:jigsaw"]);
        assert!(r[0].settings.is_none());
        let cfg = |i: usize| r[i].settings.as_ref().unwrap();
        // The plain override applies to the method's own row, not to its variants.
        assert!((cfg(1).lr - 0.05).abs() < 1e-9 && (cfg(2).lr - 1e-3).abs() < 1e-9);
        assert!(cfg(2).inpaint.is_some() && cfg(1).inpaint.is_none());
        assert!(cfg(4).jigsaw.is_some() && cfg(3).jigsaw.is_none());
        assert_eq!(r[4].method, Method::Uda);
    }

    #[test]
    fn bad_method_configs_are_refused_with_the_argument() {
        for (spec, says) in [
            ("tent", "expected METHOD=FILE"),
            ("nope:x=a.toml", "unknown method 'nope'"),
            ("tent:=a.toml", "must be non-empty"),
            ("tent:a/b=a.toml", "without '/'"),
        ] {
            let e = parse_method_configs(&specs(&[spec]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
        let e = parse_method_configs(&specs(&["uda:j=a.toml", "uda:j=b.toml"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
    }
}
