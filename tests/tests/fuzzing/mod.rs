//! A bounded, reproducible fuzzing harness on the stable toolchain.
//!
//! Each target runs a fixed number of cases in a child process (this same test binary, in
//! child mode) under an address-space limit (`RLIMIT_AS`). Case `i` of a run with seed `s` is a
//! pure function of `(s, i)` and the corpus: the corpus files as they are first, then
//! mutations of them (structure-aware ones from the target, generic byte ones from
//! [`mutate`]). The child prints each case number before running it; the parent watches:
//!
//! - a panic in a case (caught per case) fails the run;
//! - a case running longer than the per-case limit is a hang: the child is killed;
//! - an allocation beyond the address-space limit aborts the child;
//!
//! and in each event the parent rebuilds the failing input from `(s, i)`, writes it under
//! `target/tmp/fuzz-failures/` and names it. Copying that file into
//! `tests/fuzz/corpus/<target>/` makes it a regression case: corpus files run first, as they
//! are, on every run.
//!
//! Environment: `FIELDTUNE_FUZZ_CASES` (cases per target; default each target's CI count),
//! `FIELDTUNE_FUZZ_SEED` (default 1), `FIELDTUNE_FUZZ_MEM_MB` (address-space limit of the child,
//! default 3072), `FIELDTUNE_FUZZ_CASE_SECS` (per-case time limit, default 30),
//! `FIELDTUNE_FUZZ_KEEP_GOING=1` (run every case after a panic, and report all that panicked).

pub mod formats;
pub mod mutate;

use std::io::{BufRead, BufReader};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type Rng8 = ChaCha8Rng;

/// The inputs a target's cases start from: the files of its corpus folder and shipped files.
pub struct Corpus {
    pub entries: Vec<(String, Vec<u8>)>,
}

impl Corpus {
    /// A random entry's bytes (for splices).
    pub fn pick(&self, rng: &mut Rng8) -> &[u8] {
        &self.entries[rng.gen_range(0..self.entries.len())].1
    }
}

/// One fuzz target.
pub struct Target {
    /// Also the corpus folder's name: `tests/fuzz/corpus/<name>/`.
    pub name: &'static str,
    /// Cases per CI run.
    pub cases: u64,
    /// Repository files (shipped models, configs, profiles, frames) that seed the corpus too.
    pub shipped: fn() -> Vec<PathBuf>,
    /// Seeds the code makes (e.g. a checkpoint as the store writes it).
    pub made: fn() -> Vec<(String, Vec<u8>)>,
    /// A structure-aware mutation; `None` when the input does not parse (then a byte mutation
    /// is used).
    pub mutate: fn(&[u8], &Corpus, &mut Rng8) -> Option<Vec<u8>>,
    /// Runs the code under test on one input. Errors are fine; a panic is a failure.
    pub run: fn(&[u8], &Path),
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

const CHILD_ENV: &str = "FIELDTUNE_FUZZ_CHILD";
const CASE_MARK: &str = "fuzz-case ";
const DONE_MARK: &str = "fuzz-done";
const FAILED_MARK: &str = "fuzz-failed ";

/// Loads a target's corpus: its folder's files (sorted by name), the shipped files, the
/// made ones.
pub fn corpus(t: &Target) -> Corpus {
    let dir = root().join("tests/fuzz/corpus").join(t.name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"));
    files.sort();
    files.extend((t.shipped)());
    let mut entries: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|p| {
            let name = p.strip_prefix(root()).unwrap_or(p).display().to_string();
            (name, std::fs::read(p).unwrap())
        })
        .collect();
    entries.extend((t.made)());
    assert!(!entries.is_empty(), "fuzz target {}: empty corpus", t.name);
    Corpus { entries }
}

/// The input of case `i`: corpus entries as they are first, then 1 to 8 stacked mutations
/// of a random entry.
pub fn input(t: &Target, c: &Corpus, seed: u64, i: u64) -> Vec<u8> {
    if let Some(e) = c.entries.get(i as usize) {
        return e.1.clone();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv(t.name));
    rng.set_stream(i);
    let mut data = c.pick(&mut rng).to_vec();
    let rounds = 1 + (rng.gen::<u32>() % 8).trailing_zeros().min(7);
    for _ in 0..rounds {
        let structured = if rng.gen_bool(0.7) {
            (t.mutate)(&data, c, &mut rng)
        } else {
            None
        };
        data = match structured {
            Some(d) => d,
            None => mutate::bytes(&data, c, &mut rng),
        };
    }
    data
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The test of one target. In the parent: spawns the child, watches it, reports. In the
/// child (`fuzz_child` test with the child variable set): does nothing here.
pub fn fuzz(t: &Target) {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let seed = env_u64("FIELDTUNE_FUZZ_SEED", 1);
    let cases = env_u64("FIELDTUNE_FUZZ_CASES", t.cases);
    let mem_mb = env_u64("FIELDTUNE_FUZZ_MEM_MB", 3072);
    let limit = Duration::from_secs(env_u64("FIELDTUNE_FUZZ_CASE_SECS", 30));
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["fuzz_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, t.name)
        .env("FIELDTUNE_FUZZ_SEED", seed.to_string())
        .env("FIELDTUNE_FUZZ_CASES", cases.to_string())
        .env("FIELDTUNE_FUZZ_MEM_MB", mem_mb.to_string())
        .env(
            "RUST_BACKTRACE",
            std::env::var("RUST_BACKTRACE").unwrap_or_else(|_| "0".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // (last case started, when, finished, cases that panicked)
    let progress = Arc::new(Mutex::new((None::<u64>, Instant::now(), false, Vec::new())));
    let out = child.stdout.take().unwrap();
    let p = progress.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let mut g = p.lock().unwrap();
            if let Some(n) = line.strip_prefix(CASE_MARK) {
                (g.0, g.1) = (n.trim().parse().ok(), Instant::now());
            } else if let Some(n) = line.strip_prefix(FAILED_MARK) {
                g.3.extend(n.trim().parse::<u64>().ok());
            } else if line.starts_with(DONE_MARK) {
                g.2 = true;
            }
        }
    });
    let mut err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err_pipe, &mut s).ok();
        s
    });
    let mut hung = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        let since = progress.lock().unwrap().1.elapsed();
        if since > limit {
            hung = true;
            child.kill().ok();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let (last, done, failed) = {
        let g = progress.lock().unwrap();
        (g.0, g.2, g.3.clone())
    };
    let secs = started.elapsed().as_secs_f64();
    if status.success() && done && !hung {
        println!(
            "fuzz {}: {cases} cases, seed {seed}, {secs:.1} s, address space {mem_mb} MiB",
            t.name
        );
        return;
    }
    let why = if hung {
        format!("ran over the {limit:?} per-case limit (hang)")
    } else if stderr.contains("memory allocation of") {
        format!("allocated beyond the {mem_mb} MiB address-space limit")
    } else if stderr.contains("panicked") {
        "panicked".to_string()
    } else {
        format!("ended with {status}")
    };
    let Some(i) = last else {
        panic!(
            "fuzz {}: the child {why} before its first case:\n{stderr}",
            t.name
        );
    };
    let c = corpus(t);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let mut report = String::new();
    let log = dir.join(format!("{}-seed{seed}.stderr", t.name));
    std::fs::write(&log, &stderr).unwrap();
    let failing = if failed.is_empty() { vec![i] } else { failed };
    for i in failing {
        let data = input(t, &c, seed, i);
        let file = dir.join(format!("{}-seed{seed}-case{i}.bin", t.name));
        std::fs::write(&file, &data).unwrap();
        let origin = c
            .entries
            .get(i as usize)
            .map_or(String::new(), |e| format!(" (corpus file {})", e.0));
        report += &format!(
            "case {i}{origin}: input ({} bytes) written to {}\n",
            data.len(),
            file.display()
        );
    }
    panic!(
        "fuzz {} (seed {seed}) {why}:\n{report}         (copy an input into tests/fuzz/corpus/{}/ to keep it as a regression case)\n\
         the child's stderr, in full in {}:\n{}",
        t.name,
        t.name,
        log.display(),
        tail(&stderr, 6000)
    );
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The child's side: sets the address-space limit, then runs every case, printing each
/// case number first. A panic ends the child at once (after its message).
pub fn child(targets: &[&Target]) {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    let t = targets
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"));
    let seed = env_u64("FIELDTUNE_FUZZ_SEED", 1);
    let cases = env_u64("FIELDTUNE_FUZZ_CASES", t.cases);
    let mem = env_u64("FIELDTUNE_FUZZ_MEM_MB", 3072) << 20;
    rustix::process::setrlimit(
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: Some(mem),
            maximum: Some(mem),
        },
    )
    .expect("setrlimit(RLIMIT_AS)");
    let c = corpus(t);
    let work = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-work")
        .join(format!("{}-{}", t.name, std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    use std::io::Write;
    let keep_going = std::env::var_os("FIELDTUNE_FUZZ_KEEP_GOING").is_some();
    let mut out = std::io::stdout();
    let mut failed = false;
    for i in 0..cases {
        writeln!(out, "{CASE_MARK}{i}").unwrap();
        out.flush().unwrap();
        let data = input(t, &c, seed, i);
        if std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&data, &work))).is_err() {
            eprintln!("fuzz {}: case {i} panicked", t.name);
            writeln!(out, "{FAILED_MARK}{i}").unwrap();
            failed = true;
            if !keep_going {
                break;
            }
        }
    }
    std::fs::remove_dir_all(&work).ok();
    if failed {
        out.flush().unwrap();
        std::process::exit(3);
    }
    writeln!(out, "{DONE_MARK}").unwrap();
    out.flush().unwrap();
}
