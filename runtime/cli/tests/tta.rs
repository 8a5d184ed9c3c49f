//! `fieldtune tta` on a tiny stream: the shipped Fashion-MNIST CNN's 100 anchor images as two
//! domains (a strong contrast loss, then inverted brightness), on both engines.

use std::path::Path;

mod common;
use common::{fieldtune, root, text};

/// Writes DIR/<domain>/<class>/<file> with every anchor image mapped through `f`.
fn domain(dir: &Path, name: &str, f: impl Fn(u8) -> u8) {
    let anchors = root().join("models/fmnist-cnn/anchors");
    for class in std::fs::read_dir(&anchors).unwrap() {
        let class = class.unwrap().path();
        let out = dir.join(name).join(class.file_name().unwrap());
        std::fs::create_dir_all(&out).unwrap();
        for img in std::fs::read_dir(&class).unwrap() {
            let img = img.unwrap().path();
            let mut g = image::open(&img).unwrap().to_luma8();
            for p in g.pixels_mut() {
                p.0[0] = f(p.0[0]);
            }
            g.save(out.join(img.file_name().unwrap())).unwrap();
        }
    }
}

fn run(args: &[&str]) -> String {
    let o = fieldtune(args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?}:\n{out}\n{err}");
    out
}

#[test]
fn bn_and_tent_recover_a_shifted_domain_and_continual_differs_from_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Contrast squeezed into 100..140 (like contrast at high severity), then inverted.
    domain(&data, "low-contrast", |p| 100 + (p as u32 * 40 / 255) as u8);
    domain(&data, "inverted", |p| 255 - p);
    // A large TENT step (lr 0.05 instead of 1e-3) so that two steps visibly move predictions.
    let tent_cfg = tmp.path().join("tent.toml");
    std::fs::write(&tent_cfg, "lr = 0.05\n").unwrap();
    let tent_arg = format!("tent={}", tent_cfg.display());
    for engine in ["ort", "tract"] {
        let json = tmp.path().join(format!("{engine}.json"));
        let out = run(&[
            "--engine",
            engine,
            "tta",
            "--model",
            "models/fmnist-cnn",
            "--data",
            data.to_str().unwrap(),
            "--domains",
            "low-contrast,inverted",
            "--methods",
            "source,bn,tent,uda",
            "--batch",
            "50",
            "--seeds",
            "0",
            "--method-config",
            &tent_arg,
            "--out",
            json.to_str().unwrap(),
        ]);
        assert!(out.contains("mean error over 2 domains"), "{out}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let runs = v["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 8, "4 methods x 2 settings");
        let get = |m: &str, s: &str| {
            runs.iter()
                .find(|r| r["method"] == m && r["setting"] == s)
                .unwrap_or_else(|| panic!("{m}/{s} missing"))
        };
        let err = |m: &str, s: &str, d: usize| get(m, s)["domains"][d]["error"].as_f64().unwrap();
        for r in runs {
            for d in r["domains"].as_array().unwrap() {
                assert_eq!(d["count"], 100, "{r}");
                let n: u64 = d["predicted"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap())
                    .sum();
                assert_eq!(n, 100);
            }
        }
        // The shift breaks the source model; test-batch statistics repair much of it.
        let (src, bn) = (err("source", "reset", 0), err("bn", "reset", 0));
        assert!(
            src > 40.0,
            "{engine}: source error on low contrast only {src}"
        );
        assert!(bn < src - 15.0, "{engine}: bn {bn} vs source {src}");
        // Source and bn do not learn: both settings give the same figures.
        assert_eq!(err("bn", "reset", 1), err("bn", "continual", 1));
        // TENT moves the weights: its second batch differs from bn's predictions, and without a
        // reset the second domain starts from weights adapted to the first.
        let tent = get("tent", "reset");
        assert_ne!(
            tent["domains"][0]["predicted"],
            get("bn", "reset")["domains"][0]["predicted"]
        );
        assert_ne!(err("tent", "reset", 1), err("tent", "continual", 1));
        assert!(
            get("uda", "reset")["settings"]["batch_labeled"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert!(tent["mean_loss"].is_null() && tent["domains"][0]["mean_loss"].as_f64().is_some());
        assert!((tent["settings"]["lr"].as_f64().unwrap() - 0.05).abs() < 1e-6);
    }
}
