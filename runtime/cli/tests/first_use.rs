//! What a new user meets first (issue 19): a bare .onnx beside its model.toml, a bare .onnx
//! without one, commands copied from the README, logs sent to a file, `--help`.

use std::path::{Path, PathBuf};

mod common;
use common::{fieldtune, root, text};

/// The single `error:` line of a failed run (asserting there is exactly one, and no panic).
fn error_line(args: &[&str]) -> String {
    let o = fieldtune(args);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{args:?} succeeded:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one error line:\n{err}");
    lines[0].to_string()
}

/// `fieldtune eval` of `model` on the OpenCV digits with tract; stdout and stderr.
fn eval_digits(model: &Path, extra: &[&str]) -> (String, String) {
    let m = model.to_str().unwrap();
    let mut args = vec!["eval", "--model", m, "--data", "data/opencv-digits"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--engine", "tract"]);
    let o = common::fieldtune_log(&args, "info");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?}:\n{out}\n{err}");
    (out, err)
}

/// The shipped MNIST model.onnx alone in a fresh folder (no model.toml beside it).
fn lone_onnx(d: &Path) -> PathBuf {
    let onnx = d.join("model.onnx");
    std::fs::copy(root().join("models/mnist-cnn/model.onnx"), &onnx).unwrap();
    onnx
}

#[test]
fn a_bare_onnx_beside_its_model_toml_is_read_as_that_model_toml_says() {
    // models/mnist-cnn/model.onnx with the model.toml beside it: the folder's accuracy
    // (94.56%), not the 73.72% of unnormalised pixels, and a log line saying which file.
    let onnx = root().join("models/mnist-cnn/model.onnx");
    let (out, err) = eval_digits(&onnx, &[]);
    assert!(out.contains("accuracy: 0.9456"), "{out}");
    assert!(
        err.contains("as described by") && err.contains("models/mnist-cnn/model.toml"),
        "{err}"
    );
    // --mean/--std still override it.
    let (out, _) = eval_digits(&onnx, &["--mean", "0", "--std", "1"]);
    assert!(out.contains("accuracy: 0.7372"), "{out}");
}

#[test]
fn a_bare_onnx_without_normalisation_is_an_error_unless_raw_input_says_so() {
    let d = tempfile::tempdir().unwrap();
    let onnx = lone_onnx(d.path());
    let o = onnx.to_str().unwrap();
    let e = error_line(&["eval", "--model", o, "--data", "data/opencv-digits"]);
    assert!(
        e.contains(o)
            && e.contains("normalisation is unknown")
            && e.contains("--mean/--std")
            && e.contains("--raw-input")
            && e.contains("model.toml"),
        "{e}"
    );
    // The same for adapt, before any work.
    let out = d.path().join("out");
    let e = error_line(&[
        "adapt",
        "--model",
        o,
        "--unlabeled",
        "data/opencv-digits",
        "--objective",
        "tent",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("--raw-input"), "{e}");
    assert!(!out.exists());
    // Said explicitly: raw pixels (the shipped MNIST model scores 73.72% on them).
    let (out, _) = eval_digits(&onnx, &["--raw-input"]);
    assert!(out.contains("accuracy: 0.7372"), "{out}");
    let (out, _) = eval_digits(&onnx, &["--mean", "0.1307", "--std", "0.3081"]);
    assert!(out.contains("accuracy: 0.9456"), "{out}");
    // compile reads no images: it needs no normalisation.
    let step = d.path().join("step.onnx");
    let c = fieldtune(&["compile", "--model", o, "--out", step.to_str().unwrap()]);
    assert!(c.status.success(), "{}", text(&c).1);
    // --raw-input with --mean is a contradiction.
    let c = fieldtune(&[
        "eval",
        "--model",
        o,
        "--raw-input",
        "--mean",
        "0.5",
        "--std",
        "0.2",
        "--data",
        "x",
    ]);
    let e = text(&c).1;
    assert_eq!(c.status.code(), Some(2), "{e}");
    assert!(e.contains("'--raw-input' cannot be used with"), "{e}");
}

#[test]
fn a_model_toml_beside_a_bare_onnx_that_does_not_fit_it_names_both_files() {
    let base = std::fs::read_to_string(root().join("models/mnist-cnn/model.toml")).unwrap();
    let cases = [
        (base.replace("height = 28", "height = 32"), "height=32"),
        (
            base.replace("channels = 1", "channels = 3")
                .replace("mean = [0.1307]", "mean = [0.1, 0.1, 0.1]")
                .replace("std = [0.3081]", "std = [0.3, 0.3, 0.3]"),
            "channels=3",
        ),
        (
            base.replace(", \"9\"]", "]"),
            "output 'logits' has 10 classes",
        ),
        (
            base.replace("input = \"input\"", "input = \"image\""),
            "names input 'image'",
        ),
    ];
    for (toml, needle) in cases {
        let d = tempfile::tempdir().unwrap();
        let onnx = lone_onnx(d.path());
        let toml_path = d.path().join("model.toml");
        std::fs::write(&toml_path, toml).unwrap();
        let e = error_line(&[
            "eval",
            "--model",
            onnx.to_str().unwrap(),
            "--data",
            "data/opencv-digits",
        ]);
        assert!(
            e.contains(onnx.to_str().unwrap())
                && e.contains(toml_path.to_str().unwrap())
                && e.contains(needle),
            "{needle}: {e}"
        );
    }
}

/// `adapt --objective tent` at a learning rate that collapses the shipped MNIST CNN in a few
/// steps, checked every 5 steps on 200 frames; `extra` flags after. Returns the run's stdout,
/// stderr and adapt.json.
fn collapsing_tent(out: &Path, extra: &[&str]) -> (String, String, serde_json::Value) {
    let cfg = out.with_extension("toml");
    std::fs::write(
        &cfg,
        "recipe = \"tent\"\n[collapse]\nevery = 5\nframes = 200\n",
    )
    .unwrap();
    let mut args = vec![
        "adapt",
        "--model",
        "models/mnist-cnn",
        "--unlabeled",
        "data/opencv-digits",
        "--eval",
        "data/opencv-digits",
        "--config",
        cfg.to_str().unwrap(),
        "--lr",
        "0.05",
        "--steps",
        "20",
        "--batch",
        "32",
        "--engine",
        "tract",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = fieldtune(&args);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}\n{err}");
    let j = std::fs::read_to_string(out.join("adapt.json")).unwrap();
    (stdout, err, serde_json::from_str(&j).unwrap())
}

#[test]
fn adapt_warns_when_predictions_collapse_and_stops_by_default_for_tent() {
    let d = tempfile::tempdir().unwrap();
    // tent is entropy-only: it stops at the first failed check and keeps the weights of the
    // last check that passed (here the source model's: accuracy after = before).
    let (out, err, j) = collapsing_tent(&d.path().join("stop"), &[]);
    assert!(
        err.contains("WARN") && err.contains("predictions collapsing: marginal entropy"),
        "{err}"
    );
    let c = &j["collapse"];
    let at = c["first_collapse_step"].as_u64().expect("a collapse");
    assert!(at > 0 && at < 20 && at % 5 == 0, "{c}");
    assert_eq!(c["stop_on_collapse"], true);
    assert_eq!(
        j["history"].as_array().unwrap().len() as u64,
        at,
        "stopped there"
    );
    let kept = c["kept_weights_of_step"].as_u64().expect("kept weights");
    assert!(kept < at, "{c}");
    assert!(
        out.contains(&format!(
            "predictions collapsed at step {at} of 20; stopped"
        )),
        "{out}"
    );
    let checks = c["checks"].as_array().unwrap();
    let last = checks.last().unwrap();
    assert!(
        last["marginal_entropy"].as_f64().unwrap()
            < checks[0]["marginal_entropy"].as_f64().unwrap() - 0.2,
        "{c}"
    );
    if kept == 0 {
        assert_eq!(
            j["accuracy_after"], j["accuracy_before"],
            "source weights written"
        );
    }
    // --no-stop-on-collapse: warned, recorded, the run goes on to the end.
    let (out, err, j) = collapsing_tent(&d.path().join("warn"), &["--no-stop-on-collapse"]);
    let c = &j["collapse"];
    assert!(err.contains("predictions collapsing"), "{err}");
    assert_eq!(c["first_collapse_step"].as_u64(), Some(at), "{c}");
    assert_eq!(c["stop_on_collapse"], false);
    assert!(c["kept_weights_of_step"].is_null());
    assert_eq!(j["history"].as_array().unwrap().len(), 20);
    assert!(out.contains("the run went on"), "{out}");
}

#[test]
fn adapt_print_config_needs_no_run_flags_and_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let o = fieldtune(&[
        "adapt",
        "--recipe",
        "tent",
        "--lr",
        "0.002",
        "--print-config",
    ]);
    let (printed, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        printed.starts_with("# fieldtune adapt settings"),
        "{printed}"
    );
    assert!(printed.contains("\nlr = 0.002 "), "{printed}");
    for line in printed
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" = "))
    {
        assert!(line.contains(" # "), "no comment: {line}");
        // Round numbers: a float value has at most 6 significant digits (no f64 noise).
        let value = line
            .split_once(" = ")
            .unwrap()
            .1
            .split(" #")
            .next()
            .unwrap()
            .trim();
        if value.parse::<f64>().is_ok() && value.contains('.') {
            let digits = value.replace(['-', '.'], "");
            let significant = digits.trim_start_matches('0').trim_end_matches('0');
            assert!(significant.len() <= 6, "float noise: {line}");
        }
    }
    // Loaded again (flags are not needed any more), it prints the same settings.
    let file = d.path().join("my.toml");
    std::fs::write(&file, &printed).unwrap();
    let again = fieldtune(&[
        "adapt",
        "--config",
        file.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(again.status.success(), "{}", text(&again).1);
    assert_eq!(text(&again).0, printed);
    // Without --print-config the run flags are required again.
    let o = fieldtune(&["adapt", "--config", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--model"), "{}", text(&o).1);
}

#[test]
fn the_readme_tta_command_says_how_to_make_its_data() {
    // data/fmnist-c is not shipped: an empty folder stands for a fresh clone's.
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("fmnist-c");
    std::fs::create_dir(&data).unwrap();
    let e = error_line(&[
        "tta",
        "--model",
        "models/fmnist-cnn",
        "--data",
        data.to_str().unwrap(),
        "--severity",
        "5",
    ]);
    assert!(
        e.contains("gaussian_noise-5")
            && e.contains("15 of 15 missing")
            && e.contains("scripts/data/corrupt_fmnist.py")
            && e.contains("data/fmnist-c/DATA.md"),
        "{e}"
    );
    // The README's command is the one this error answers, and says the same.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.contains("fieldtune tta --model models/fmnist-cnn --data data/fmnist-c"))
        .expect("README shows the tta command");
    assert!(line.contains("corrupt_fmnist.py"), "{line}");
    // Named domains that are missing are listed against the folders that are there.
    std::fs::create_dir(data.join("clean")).unwrap();
    let e = error_line(&[
        "tta",
        "--model",
        "models/fmnist-cnn",
        "--data",
        data.to_str().unwrap(),
        "--domains",
        "clean,fog-3",
    ]);
    assert!(e.contains("fog-3") && e.contains("holds: clean"), "{e}");
}

#[test]
fn the_minimum_onnx_runtime_is_stated_in_the_readme_jetson_md_and_doctor() {
    let min = fieldtune_engine::ORT_MIN_VERSION;
    let min = format!("{}.{}", min.major, min.minor);
    for doc in ["README.md", "docs/JETSON.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        assert!(
            text.contains(&format!("Minimum ONNX Runtime: {min}")),
            "{doc} does not state the minimum ONNX Runtime {min}"
        );
    }
    // With or without a library found.
    let o = fieldtune(&["doctor"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains(&format!("minimum: ONNX Runtime {min} (C API level")),
        "{out}"
    );
}

#[test]
fn test_sh_says_which_optional_features_are_on_and_the_readme_lists_every_package() {
    let script = root().join("scripts/test-features.sh");
    // No GStreamer development packages visible to pkg-config: the feature is off, said plainly.
    let o = std::process::Command::new("bash")
        .arg(&script)
        .env("PKG_CONFIG_LIBDIR", "/nonexistent")
        .env("PKG_CONFIG_PATH", "")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out.trim(), "fieldtune/linux-gpio");
    assert!(
        err.contains("feature gstreamer: OFF") && err.contains("feature linux-gpio: on"),
        "{err}"
    );
    // Every package the script names is in the README.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let names = std::fs::read_to_string(&script).unwrap();
    let packages: Vec<&str> = names
        .split(|c: char| c.is_whitespace() || ":;()".contains(c))
        .filter(|w| {
            w.starts_with("python3-")
                || w.starts_with("libgstreamer")
                || w.starts_with("gstreamer1.0-")
                || *w == "pkg-config"
                || *w == "fonts-dejavu-core"
        })
        .collect();
    assert!(packages.len() >= 11, "{packages:?}");
    for p in packages {
        assert!(readme.contains(p), "README.md does not list {p}");
    }
    // With the packages present (as on this project's machines and CI), the feature is on.
    if std::process::Command::new("pkg-config")
        .args(["--exists", "gstreamer-app-1.0", "gstreamer-video-1.0"])
        .status()
        .is_ok_and(|s| s.success())
    {
        let o = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .unwrap();
        assert_eq!(
            text(&o).0.trim(),
            "fieldtune/gstreamer,fieldtune/linux-gpio"
        );
    }
}

#[test]
fn doctor_board_strict_fails_on_differences_that_matter_only() {
    // This machine is not a Jetson: the architecture (at least) differs.
    let o = fieldtune(&["doctor", "--board", "jetson-orin-nano-8gb"]);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "without --strict a report is a success: {err}"
    );
    assert!(out.contains("that matter: arch"), "{out}");
    let e = error_line(&["doctor", "--board", "jetson-orin-nano-8gb", "--strict"]);
    assert!(
        e.contains("--strict") && e.contains("jetson-orin-nano-8gb") && e.contains("arch"),
        "{e}"
    );
    // --strict needs a board.
    let o = fieldtune(&["doctor", "--strict"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
}

#[test]
fn an_unreadable_or_non_truetype_report_font_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let events = root().join("runtime/field/tests/fixtures/events-v1.jsonl");
    let png = d.path().join("r.png");
    let report = |font: &str| {
        vec![
            "report".to_string(),
            "--events".into(),
            events.to_str().unwrap().into(),
            "--out".into(),
            png.to_str().unwrap().into(),
            "--font".into(),
            font.into(),
        ]
    };
    let args = report("/nonexistent/nope.ttf");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = error_line(&args);
    assert!(
        e.contains("--font") && e.contains("/nonexistent/nope.ttf"),
        "{e}"
    );
    let readme = root().join("README.md");
    let args = report(readme.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = error_line(&args);
    assert!(e.contains("README.md is not a TrueType font"), "{e}");
    assert!(!png.exists(), "nothing drawn");
    // A real font draws.
    let dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    if Path::new(dejavu).is_file() {
        let args = report(dejavu);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = fieldtune(&args);
        assert!(o.status.success(), "{}", text(&o).1);
        assert!(png.is_file());
    }
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes_and_the_engine_is_named_once() {
    // The tests' stderr is a pipe, as a log file or journald is.
    for engine in ["tract", "auto"] {
        let o = common::fieldtune_log(
            &[
                "eval",
                "--model",
                "models/mnist-cnn/model.onnx",
                "--data",
                "data/opencv-digits",
                "--engine",
                engine,
            ],
            "info",
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("INFO"), "info lines are logged: {err}");
        assert!(
            !err.contains('\x1b') && !out.contains('\x1b'),
            "ANSI codes:\n{err:?}"
        );
        let lines = out
            .lines()
            .chain(err.lines())
            .filter(|l| l.contains("engine:"))
            .count();
        assert_eq!(lines, 1, "{engine}: the engine line once:\n{out}\n{err}");
    }
}

#[test]
fn engine_flags_have_their_own_help_heading_only_on_commands_that_run_an_engine() {
    let help = |args: &[&str]| {
        let o = fieldtune(args);
        assert!(o.status.success(), "{}", text(&o).1);
        text(&o).0
    };
    for cmd in ["adapt", "eval", "bench", "tta", "demo", "run", "doctor"] {
        let h = help(&[cmd, "--help"]);
        let (own, engine) = h
            .split_once("\nEngine:\n")
            .unwrap_or_else(|| panic!("{cmd}:\n{h}"));
        for flag in [
            "--engine <ENGINE>",
            "--ort-lib",
            "--threads",
            "--ep",
            "--graph-opt",
        ] {
            assert!(
                engine.contains(flag),
                "{cmd}: {flag} not under Engine:\n{h}"
            );
            assert!(
                !own.contains(flag),
                "{cmd}: {flag} among the command's own:\n{h}"
            );
        }
    }
    for cmd in ["compile", "report"] {
        let h = help(&[cmd, "--help"]);
        assert!(
            !h.contains("Engine:") && !h.contains("--ort-lib") && !h.contains("--engine"),
            "{cmd}:\n{h}"
        );
        let o = fieldtune(&[cmd, "--engine", "tract"]);
        assert_eq!(o.status.code(), Some(2), "{cmd} takes no --engine");
    }
    // Before the command they still work (scripts write `fieldtune --engine X run`); after it
    // they win.
    let o = fieldtune(&[
        "--engine",
        "tract",
        "eval",
        "--model",
        "models/mnist-cnn",
        "--data",
        "data/opencv-digits",
    ]);
    assert!(text(&o).0.starts_with("engine: tract"), "{}", text(&o).0);
    let o = fieldtune(&[
        "--engine",
        "ort",
        "--ort-lib",
        "/nonexistent",
        "eval",
        "--engine",
        "tract",
        "--model",
        "models/mnist-cnn",
        "--data",
        "data/opencv-digits",
    ]);
    assert!(text(&o).0.starts_with("engine: tract"), "{}", text(&o).1);
    let e = error_line(&[
        "--engine",
        "tract",
        "compile",
        "--model",
        "models/mnist-cnn",
        "--out",
        "x.onnx",
    ]);
    assert!(e.contains("runs no engine"), "{e}");
}
