//! Shipped profiles parse and validate; bad profiles give errors naming the file and key.

use std::path::Path;

use fieldtune_board_profile::{
    shipped_names, EngineKind, ExecutionProvider, PowerManager, Profile, ProfileError, SHIPPED,
};

fn profiles_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles"))
}

/// A valid profile to break in tests (line numbers in the assertions count from its empty
/// first line: [board] is line 2, [adaptation] 13, [thermal] 18).
const GOOD: &str = r#"
[board]
name = "test-board"
description = "test"
arch = "aarch64"
cpu_cores = 4
memory_mb = 4096

[engine]
order = ["ort", "tract"]
execution_providers = ["cuda", "cpu"]

[adaptation]
memory_budget_mb = 1024
batch_labeled = 8
batch_unlabeled = 16

[thermal]
zones = ["cpu-thermal"]
ceiling_c = 80

[camera]
pipeline = "videotestsrc ! appsink"
"#;

fn err(text: &str) -> String {
    Profile::from_toml(text, "bad.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn every_shipped_profile_parses_validates_and_matches_its_file() {
    let mut files: Vec<String> = std::fs::read_dir(profiles_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    let mut names: Vec<&str> = shipped_names();
    names.sort();
    let expected: Vec<String> = names.iter().map(|n| format!("{n}.toml")).collect();
    assert_eq!(files, expected, "boards/profiles/ and SHIPPED disagree");
    assert_eq!(
        names,
        [
            "jetson-agx-orin-64gb",
            "jetson-orin-nano-8gb",
            "jetson-orin-nx-16gb",
            "jetson-xavier-nx",
            "raspberry-pi-5",
            "x86-cpu"
        ]
    );
    for (name, text) in SHIPPED {
        let p = Profile::from_toml(text, name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.board.name, *name);
        let from_disk = Profile::load_file(&profiles_dir().join(format!("{name}.toml"))).unwrap();
        assert_eq!(p, from_disk, "{name}: built-in copy differs from the file");
        assert_eq!(Profile::load(name).unwrap(), p);
        assert!(p.thermal.resume_c() < p.thermal.ceiling_c);
        assert!(
            p.adaptation.memory_budget_mb <= p.board.memory_mb / 2,
            "{name}"
        );
        if *name != "x86-cpu" {
            assert!(
                !p.board.sources.is_empty(),
                "{name}: cite the vendor documents"
            );
            assert!(
                p.gpio.lines().count() == 3,
                "{name}: status, fault, trigger lines"
            );
        }
    }
}

#[test]
fn shipped_profiles_say_what_the_issue_asks() {
    let nano = Profile::load("jetson-orin-nano-8gb").unwrap();
    assert_eq!(nano.engine.order, [EngineKind::Ort, EngineKind::Tract]);
    assert_eq!(
        nano.engine.execution_providers,
        [
            ExecutionProvider::Tensorrt,
            ExecutionProvider::Cuda,
            ExecutionProvider::Cpu
        ]
    );
    assert_eq!(nano.power.manager, PowerManager::Nvpmodel);
    assert!(nano.camera.pipeline.starts_with("nvarguscamerasrc"));
    assert!(nano
        .camera
        .pipeline
        .ends_with("appsink name=sink drop=true max-buffers=2"));
    let pin7 = nano.gpio.status_led.as_ref().unwrap();
    assert_eq!(
        (pin7.chip.as_str(), pin7.line, pin7.header_pin),
        ("tegra234-gpio", 105, Some(29))
    );

    let pi = Profile::load("raspberry-pi-5").unwrap();
    assert_eq!(pi.engine.order, [EngineKind::Tract]);
    assert_eq!(pi.power.manager, PowerManager::None);
    assert!(pi.camera.pipeline.starts_with("libcamerasrc"));

    let x86 = Profile::load("x86-cpu").unwrap();
    assert_eq!(x86.board.arch, "x86_64");
    assert_eq!(x86.engine.execution_providers, [ExecutionProvider::Cpu]);
    assert_eq!(x86.gpio.lines().count(), 0);
}

#[test]
fn defaults_apply() {
    let p = Profile::from_toml(GOOD, "good.toml").unwrap();
    assert_eq!(p.inference.batch, 1);
    assert_eq!(p.adaptation.duty_cycle_percent, 50);
    assert_eq!(p.thermal.resume_c(), 70.0);
    assert_eq!(p.power.manager, PowerManager::None);
    assert_eq!(p.camera.trigger_pulse_us, 100);
    assert!(p.gpio.status_led.is_none());
    let no_eps = GOOD.replace("execution_providers = [\"cuda\", \"cpu\"]\n", "");
    let p = Profile::from_toml(&no_eps, "good.toml").unwrap();
    assert_eq!(p.engine.execution_providers, [ExecutionProvider::Cpu]);
}

#[test]
fn missing_key_is_named_with_its_table() {
    let text = GOOD.replace("batch_labeled = 8\n", "");
    assert_eq!(
        err(&text),
        "bad.toml:13: adaptation.batch_labeled: required key is missing"
    );
    let text = GOOD.replace("[camera]\npipeline = \"videotestsrc ! appsink\"\n", "");
    assert_eq!(err(&text), "bad.toml: camera: required key is missing");
}

#[test]
fn unknown_key_is_named_with_the_known_ones() {
    let text = GOOD.replace("batch_labeled = 8", "batch_labeled = 8\nbatch_size = 8");
    let e = err(&text);
    assert!(
        e.starts_with(
            "bad.toml:16: adaptation.batch_size: unknown key (known keys here: `memory_budget_mb`"
        ),
        "{e}"
    );
    let text = format!("{GOOD}\n[gpio.status_led]\nchip = \"gpiochip0\"\nline = 3\npin = 7\n");
    let e = err(&text);
    assert!(e.starts_with("bad.toml:"), "{e}");
    assert!(e.contains(": gpio.status_led.pin: unknown key"), "{e}");
    let text = format!("{GOOD}\n[boards]\nx = 1\n");
    assert!(
        err(&text).contains(": boards: unknown key"),
        "{}",
        err(&text)
    );
}

#[test]
fn wrong_type_is_named() {
    let text = GOOD.replace("ceiling_c = 80", "ceiling_c = \"hot\"");
    let e = err(&text);
    assert!(
        e.starts_with("bad.toml:20: thermal.ceiling_c: invalid type: string \"hot\""),
        "{e}"
    );
    let text = GOOD.replace("cpu_cores = 4", "cpu_cores = -4");
    let e = err(&text);
    assert!(e.starts_with("bad.toml:6: board.cpu_cores: "), "{e}");
    let text = GOOD.replace(
        "order = [\"ort\", \"tract\"]",
        "order = [\"ort\", \"onnx\"]",
    );
    let e = err(&text);
    assert!(
        e.starts_with("bad.toml:10: engine.order[1]: unknown variant `onnx`"),
        "{e}"
    );
}

#[test]
fn syntax_error_gives_the_line() {
    let text = GOOD.replace("[thermal]", "[thermal");
    let e = err(&text);
    assert!(e.starts_with("bad.toml:18: invalid table header"), "{e}");
}

#[test]
fn invalid_values_are_all_named_on_one_line() {
    let text = GOOD
        .replace("memory_budget_mb = 1024", "memory_budget_mb = 0")
        .replace("ceiling_c = 80", "ceiling_c = 80\nresume_c = 85")
        .replace(
            "order = [\"ort\", \"tract\"]",
            "order = [\"tract\", \"tract\"]",
        );
    let e = Profile::from_toml(&text, "bad.toml").unwrap_err();
    match &e {
        ProfileError::Invalid { file, problems } => {
            assert_eq!(file, "bad.toml");
            let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "engine.order[1]",
                    "adaptation.memory_budget_mb",
                    "thermal.resume_c"
                ]
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "bad.toml: engine.order[1]: `tract` is listed twice; adaptation.memory_budget_mb: must be > 0; thermal.resume_c: 85 °C: must be below thermal.ceiling_c (80 °C)"
    );
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn more_value_checks() {
    let budget = GOOD.replace("memory_budget_mb = 1024", "memory_budget_mb = 8192");
    assert_eq!(
        err(&budget),
        "bad.toml: adaptation.memory_budget_mb: 8192 MiB is more than board.memory_mb (4096 MiB)"
    );
    let mode = format!("{GOOD}\n[power]\nmanager = \"nvpmodel\"\nmode = \"30W\"\nmodes = [\"MODE_15W\", \"MAXN\"]\n");
    assert_eq!(
        err(&mode),
        "bad.toml: power.mode: `30W` is not one of power.modes (MODE_15W, MAXN)"
    );
    let ok_mode = mode.replace("\"30W\"", "\"15w\"");
    Profile::from_toml(&ok_mode, "ok.toml").unwrap();
    let dup = format!(
        "{GOOD}\n[gpio.status_led]\nchip = \"gpiochip0\"\nline = 3\n[gpio.trigger]\nchip = \"gpiochip0\"\nline = 3\nheader_pin = 41\n"
    );
    assert_eq!(
        err(&dup),
        "bad.toml: gpio.trigger.header_pin: 41: must be 1 to 40; gpio.trigger: gpiochip0 line 3 (header pin 41) is also gpio.status_led"
    );
}

#[test]
fn loading_by_name_and_path() {
    let e = Profile::load("jetson-nano-2gb").unwrap_err().to_string();
    assert!(
        e.starts_with(
            "unknown board `jetson-nano-2gb`: shipped profiles are jetson-orin-nano-8gb, "
        ),
        "{e}"
    );
    let e = Profile::load("/nonexistent/board.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/board.toml: "), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, GOOD.replace("cpu_cores = 4", "cpu_cores = 0")).unwrap();
    let e = Profile::load(path.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("{}: board.cpu_cores: must be > 0", path.display())
    );
}
