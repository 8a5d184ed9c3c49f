//! `--target portable|tuned|auto` on `adapt` and `run`: adapting the MNIST CNN with the tuned
//! train step (one-pass fieldtune-domain kernels) writes the same weights as the portable step,
//! on ONNX Runtime and on tract; the target reaches the run's `[adapt]` settings; an unknown
//! target is refused by name.

use std::collections::HashMap;
use std::path::Path;

use fieldtune_tensor::{st, Tensor};

mod common;
use common::{fieldtune, mnist_adapt_args, text};

fn adapt(engine: &str, target: &str, out: &Path) -> (String, serde_json::Value) {
    let o = fieldtune(&mnist_adapt_args(
        "data/opencv-digits",
        out.to_str().unwrap(),
        &[
            "--steps", "5", "--batch", "16", "--engine", engine, "--target", target,
        ],
    ));
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{engine} {target}:\n{stdout}\n{err}");
    let summary = serde_json::from_slice(&std::fs::read(out.join("adapt.json")).unwrap()).unwrap();
    (stdout, summary)
}

fn checkpoint(dir: &Path) -> HashMap<String, Tensor> {
    let bytes = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    st::from_bytes(&bytes).unwrap().0.into_iter().collect()
}

#[test]
fn adapt_with_the_tuned_target_writes_the_portable_weights_on_both_engines() {
    let tmp = tempfile::tempdir().unwrap();
    for (engine, tuned) in [("ort", "ort-cpu"), ("tract", "tract")] {
        let p = tmp.path().join(format!("{engine}-portable"));
        let t = tmp.path().join(format!("{engine}-tuned"));
        let (_, sp) = adapt(engine, "portable", &p);
        let (stdout, st) = adapt(engine, "tuned", &t);
        assert_eq!(sp["train_step_target"], "portable");
        assert_eq!(st["train_step_target"], tuned, "{engine}");
        assert!(stdout.contains(&format!("target {tuned}")), "{stdout}");
        assert_eq!(st["settings"]["target"], "tuned");
        let (a, b) = (checkpoint(&p), checkpoint(&t));
        assert_eq!(a.len(), b.len());
        let mut moved = false;
        for (name, ta) in &a {
            let d = ta
                .max_rel_diff(&b[name])
                .unwrap_or_else(|| panic!("{engine}: {name} changed shape"));
            assert!(
                d <= 1e-5,
                "{engine}: {name} differs by {d:.2e} between the portable and tuned runs"
            );
            moved |= ta.as_f32().into_iter().flatten().any(|v| *v != 0.0);
        }
        assert!(moved, "{engine}: the checkpoint holds only zeros");
    }
}

#[test]
fn target_reaches_the_settings_and_unknown_targets_are_refused() {
    let o = fieldtune(&["adapt", "--print-config", "--target", "auto"]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(stdout.contains("target = \"auto\""), "{stdout}");
    let o = fieldtune(&[
        "run",
        "--config",
        "configs/field-demo.toml",
        "--print-config",
        "--target",
        "tuned",
    ]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let adapt = stdout.split("[adapt]").nth(1).expect("an [adapt] table");
    assert!(adapt.contains("target = \"tuned\""), "{stdout}");
    for cmd in ["adapt", "run"] {
        let o = fieldtune(&[cmd, "--print-config", "--target", "ort-cuda"]);
        let (_, err) = text(&o);
        assert!(!o.status.success());
        assert!(
            err.contains("unknown target 'ort-cuda' (portable, tuned or auto)"),
            "{cmd}: {err}"
        );
    }
}
