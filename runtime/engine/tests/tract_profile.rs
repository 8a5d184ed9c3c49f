//! tract's per-node profile (`FIELDTUNE_TRACT_PROFILE`): its own test binary, since the switch
//! is a process-wide environment variable.

mod common;

use common::*;
use fieldtune_engine::{Engine, TractEngine};

#[test]
fn tract_profile_records_every_node_and_run() {
    let dir = std::env::temp_dir().join(format!("fieldtune-tract-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("FIELDTUNE_TRACT_PROFILE", dir.join("prof"));
    let mut rng = Rng::new(5);
    {
        let mut s = TractEngine::new().load(&gemm_relu_model(), "gemm").unwrap();
        for _ in 0..3 {
            s.run(&[("x", &rng.tensor(&[2, 4]))]).unwrap();
        }
    } // written when the session ends
    let path = dir.join("prof.gemm.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let events: serde_json::Value = serde_json::from_str(&text).unwrap();
    let events = events.as_array().unwrap();
    assert!(!events.is_empty(), "no nodes in {text}");
    for e in events {
        assert_eq!(e["cat"], "Node");
        assert!(e["name"].as_str().unwrap().ends_with("_kernel_time"));
        assert!(!e["args"]["op_name"].as_str().unwrap().is_empty());
        assert_eq!(e["args"]["runs"], 3, "{e}");
        assert!(e["dur"].as_f64().unwrap() >= 0.0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
