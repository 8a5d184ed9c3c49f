//! ONNX Runtime discovery in its own process (the library binds once per process).

mod common;

use std::path::Path;

use fieldtune_engine::{
    search_ort, select_engine, EngineError, EnginePreference, OrtEngine, OrtOptions, OrtSource,
};

#[test]
fn explicit_failure_is_an_error_then_discovery_still_works_then_library_is_fixed() {
    // An explicit library that does not exist is an error even under Auto: no silent fallback.
    let bad = OrtOptions {
        lib: Some("/no/such/dir/libonnxruntime.so".into()),
        ..Default::default()
    };
    match select_engine(EnginePreference::Auto, bad.clone()) {
        Err(EngineError::OrtLoad { path, .. }) => {
            assert_eq!(path, Path::new("/no/such/dir/libonnxruntime.so"))
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(e) => panic!("loaded {} from a path that does not exist", e.describe()),
    }
    // Asking again gives the cached failure.
    assert!(matches!(
        OrtEngine::new(bad),
        Err(EngineError::OrtLoad { .. })
    ));

    // A library older than the build's minimum is refused, naming its version and the
    // minimum (a stand-in built with cc: `OrtGetApiBase` whose version string is 1.16.3).
    let old = old_ort_stand_in("1.16.3");
    match OrtEngine::new(OrtOptions {
        lib: Some(old.clone()),
        ..Default::default()
    }) {
        Err(EngineError::OrtLoad { path, message }) => {
            assert_eq!(path, old);
            assert!(message.contains("1.16.3"), "{message}");
            let min = fieldtune_engine::ORT_MIN_VERSION;
            assert!(
                message.contains(&format!("{}.{} and newer", min.major, min.minor)),
                "{message}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(e) => panic!("loaded {e:?} as ONNX Runtime"),
    }
    std::fs::remove_dir_all(old.parent().unwrap()).unwrap();

    // Normal discovery (no explicit path) then finds the project-local install.
    let search = search_ort(None);
    assert!(
        !search.candidates.is_empty(),
        "ONNX Runtime not found: run scripts/install-ort.sh (looked in: {})",
        search.searched.join(", ")
    );
    let e = common::ort();
    let loaded = e.runtime_info().location.clone();
    assert_eq!(loaded, search.candidates[0], "the first candidate loads");
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        assert_eq!(loaded.source, OrtSource::ProjectLocal);
    }

    // The same library named explicitly (file or its directory) is fine ...
    let same = OrtOptions {
        lib: Some(loaded.path.clone()),
        ..Default::default()
    };
    assert!(OrtEngine::new(same).is_ok());
    let dir = OrtOptions {
        lib: Some(loaded.path.parent().unwrap().to_path_buf()),
        ..Default::default()
    };
    assert!(OrtEngine::new(dir).is_ok());

    // ... another one cannot replace it in this process.
    let tmp = std::env::temp_dir().join(format!("ft-other-ort-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let other = tmp.join("libonnxruntime.so.1.99.0");
    std::fs::write(&other, b"not a library").unwrap();
    let r = OrtEngine::new(OrtOptions {
        lib: Some(other.clone()),
        ..Default::default()
    });
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(
        matches!(r, Err(EngineError::OrtAlreadyLoaded { .. })),
        "{:?}",
        r.err()
    );
}

/// Builds a shared library that exports `OrtGetApiBase` reporting `version` (nothing else of
/// ONNX Runtime: a too-old library must be refused before any other call).
fn old_ort_stand_in(version: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ft-old-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("old.c");
    std::fs::write(
        &src,
        format!(
            "typedef struct {{ const void *(*get_api)(unsigned); const char *(*version)(void); }} Base;\n\
             static const void *get_api(unsigned v) {{ (void)v; return 0; }}\n\
             static const char *version(void) {{ return \"{version}\"; }}\n\
             static const Base base = {{ get_api, version }};\n\
             const Base *OrtGetApiBase(void) {{ return &base; }}\n"
        ),
    )
    .unwrap();
    let lib = dir.join(format!("libonnxruntime.so.{version}"));
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("cc (the C compiler cargo links with) not found");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

#[test]
fn search_lists_places_in_order() {
    let s = search_ort(None);
    let joined = s.searched.join(" | ");
    let pos = |needle: &str| {
        joined
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not in {joined}"))
    };
    assert!(pos("ORT_DYLIB_PATH") < pos(".ort/lib"));
    assert!(pos(".ort/lib") < pos("Python"));
    assert!(pos("Python") < pos("system"));
    // Sources come in discovery order.
    let order = |src: OrtSource| match src {
        OrtSource::Explicit => 0,
        OrtSource::EnvVar => 1,
        OrtSource::ProjectLocal => 2,
        OrtSource::PythonPackage => 3,
        OrtSource::System => 4,
    };
    let ranks: Vec<_> = s.candidates.iter().map(|c| order(c.source)).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{:?}", s.candidates);
}
