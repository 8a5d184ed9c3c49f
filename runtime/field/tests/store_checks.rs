//! Checkpoints that pass their checksum but do not fit the model, and state files that are
//! links or FIFOs: each is moved aside (never deleted) and the next candidate serves;
//! `verify_dir_for` (what `run --check-state` runs) refuses the same files.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fieldtune_adapt::checkpoint;
use fieldtune_field::store::{
    verify_dir, verify_dir_for, CheckpointMeta, Store, LAST_GOOD, PREVIOUS,
};
use fieldtune_tensor::Tensor;

fn params(v: f32) -> HashMap<String, Tensor> {
    HashMap::from([
        (
            "w".to_string(),
            Tensor::f32(vec![2], vec![v, v + 1.0]).unwrap(),
        ),
        ("b".to_string(), Tensor::f32(vec![1], vec![v]).unwrap()),
    ])
}

fn meta(version: u64) -> CheckpointMeta {
    CheckpointMeta {
        version,
        round: version,
        step: version,
        kind: "adapted".into(),
        model_sha256: "abc".into(),
        metrics: serde_json::Value::Null,
        unix_ms: 1,
    }
}

/// Writes a checkpoint that passes its checksum, with any tensors and version.
fn write_raw(p: &Path, tensors: &[(&str, Tensor)], version: &str) {
    let t: BTreeMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let m = HashMap::from([
        ("fieldtune.version".to_string(), version.to_string()),
        ("round".into(), "1".into()),
        ("step".into(), "1".into()),
        ("kind".into(), "adapted".into()),
        ("source_model_sha256".into(), "abc".into()),
        ("metrics".into(), "null".into()),
        ("unix_ms".into(), "1".into()),
    ]);
    checkpoint::save(p, &t, &m).unwrap();
}

/// A state folder with source, previous (version 1) and last-good (version 2).
fn state() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let (s, _, _) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
    s.commit(&params(1.0), &meta(1)).unwrap();
    s.commit(&params(2.0), &meta(2)).unwrap();
    d
}

fn moved_aside(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .count()
}

#[test]
fn misfitting_checkpoints_are_moved_aside_and_previous_serves() {
    let f = |v: Vec<f32>, shape: Vec<usize>| Tensor::f32(shape, v).unwrap();
    type Case<'a> = (&'a str, Vec<(&'a str, Tensor)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "wrong shape",
            vec![
                ("w", f(vec![1.0; 3], vec![3])),
                ("b", f(vec![1.0], vec![1])),
            ],
            "`w`",
        ),
        (
            "missing tensor",
            vec![("w", f(vec![1.0; 2], vec![2]))],
            "`b`",
        ),
        (
            "extra tensor",
            vec![
                ("w", f(vec![1.0; 2], vec![2])),
                ("b", f(vec![1.0], vec![1])),
                ("x", f(vec![1.0], vec![1])),
            ],
            "`x`",
        ),
        (
            "NaN",
            vec![
                ("w", f(vec![f32::NAN, 1.0], vec![2])),
                ("b", f(vec![1.0], vec![1])),
            ],
            "NaN",
        ),
    ];
    for (what, tensors, needle) in cases {
        let d = state();
        write_raw(&d.path().join(LAST_GOOD), &tensors, "3");
        let e = verify_dir_for(d.path(), Some(("abc", &params(0.0))))
            .expect_err(what)
            .to_string();
        assert!(e.contains(needle) && e.contains(LAST_GOOD), "{what}: {e}");
        let (_, got, rep) = Store::open(d.path(), "abc", &params(0.0)).expect(what);
        assert_eq!(got.meta.version, 1, "{what}: previous serves");
        assert_eq!(got.params, params(1.0));
        assert_eq!(rep.quarantined.len(), 1, "{what}");
        assert!(
            rep.quarantined[0].2.contains(needle),
            "{what}: {:?}",
            rep.quarantined
        );
        assert_eq!(moved_aside(d.path()), 1, "{what}: kept, not deleted");
    }
}

#[test]
fn a_version_near_u64_max_is_refused_instead_of_wrapping() {
    let d = state();
    let two = vec![
        ("w", Tensor::f32(vec![2], vec![5.0, 6.0]).unwrap()),
        ("b", Tensor::f32(vec![1], vec![5.0]).unwrap()),
    ];
    write_raw(&d.path().join(LAST_GOOD), &two, &u64::MAX.to_string());
    assert!(verify_dir(d.path())
        .unwrap_err()
        .to_string()
        .contains("fieldtune.version"));
    let (_, got, rep) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
    assert_eq!(got.meta.version, 1);
    assert_eq!(rep.quarantined.len(), 1);
}

#[test]
fn previous_is_a_separate_copy_after_commits_and_after_a_linked_leftover() {
    let d = state();
    let (last, prev) = (d.path().join(LAST_GOOD), d.path().join(PREVIOUS));
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_ne!(ino(&last), ino(&prev), "previous has its own inode");
    // What older versions left after a kill between link and rename: one inode, two names.
    std::fs::remove_file(&prev).unwrap();
    std::fs::hard_link(&last, &prev).unwrap();
    let (_, got, _) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
    assert_eq!(got.meta.version, 2);
    assert_ne!(ino(&last), ino(&prev), "separated on open");
    // Damaging last-good now leaves previous intact.
    let mut b = std::fs::read(&last).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    std::fs::write(&last, &b).unwrap();
    let v = verify_dir(d.path());
    assert!(v.is_err());
    let (_, got, _) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
    assert_eq!(got.meta.version, 2, "previous is the same weights, intact");
}

#[test]
fn links_and_fifos_in_the_state_folder_are_moved_aside_not_followed() {
    let d = state();
    let last = d.path().join(LAST_GOOD);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("elsewhere.safetensors");
    std::fs::rename(&last, &target).unwrap();
    std::os::unix::fs::symlink(&target, &last).unwrap();
    let (_, got, rep) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
    assert_eq!(got.meta.version, 1);
    assert!(
        rep.quarantined[0].2.contains("symbolic link"),
        "{:?}",
        rep.quarantined
    );
    assert!(target.is_file(), "the link's target is untouched");
    // A FIFO as last-good is refused at once instead of blocking the start.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &last,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert!(verify_dir(d.path())
        .unwrap_err()
        .to_string()
        .contains("regular"));
    let (_, got, rep) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
    assert_eq!(got.meta.version, 1);
    assert!(
        rep.quarantined[0].2.contains("regular"),
        "{:?}",
        rep.quarantined
    );
    // A state folder that is itself a link is refused, naming it.
    let link = outside.path().join("state-link");
    std::os::unix::fs::symlink(d.path(), &link).unwrap();
    let e = Store::open(&link, "abc", &params(0.0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("state-link") && e.contains("symbolic link"),
        "{e}"
    );
}

#[test]
fn a_huge_garbage_checkpoint_is_refused_by_its_size_before_it_is_read() {
    let d = state();
    let last = d.path().join(LAST_GOOD);
    // A sparse 3 GiB file: reading it would need gigabytes of memory.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&last)
        .unwrap();
    f.set_len(3 << 30).unwrap();
    drop(f);
    let e = verify_dir_for(d.path(), Some(("abc", &params(0.0))))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bytes") && e.contains(LAST_GOOD), "{e}");
    let (_, got, rep) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
    assert_eq!(got.meta.version, 1);
    assert!(
        rep.quarantined[0].2.contains("at most"),
        "{:?}",
        rep.quarantined
    );
    assert_eq!(moved_aside(d.path()), 1, "kept, not deleted");
}
