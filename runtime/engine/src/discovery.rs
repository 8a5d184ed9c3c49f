//! Finding and loading the ONNX Runtime shared library.
//!
//! Order (first that loads wins):
//! 1. an explicit path (the CLI's `--ort-lib`; a file or a directory holding the library),
//! 2. the `ORT_DYLIB_PATH` environment variable,
//! 3. a project-local install made by `scripts/install-ort.sh`: `.ort/lib/libonnxruntime.so*` in
//!    the current directory or any ancestor, then beside or above the running executable,
//! 4. `onnxruntime/capi/libonnxruntime.so*` inside installed Python packages (how the JetPack and
//!    PyPI wheels ship it),
//! 5. the system library directories (`LD_LIBRARY_PATH`, `/etc/ld.so.conf`, the usual lib dirs).
//!
//! Explicit sources (1, 2) are authoritative: when one is given and fails, discovery stops with
//! that error instead of quietly using another library.
//!
//! `ort` can bind one library per process, so the first successful load is kept for the life of
//! the process (a [`OnceLock`]); failures are cached too, keyed by the explicit path asked for.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::EngineError;

/// Where an ONNX Runtime library was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrtSource {
    /// Given explicitly (`--ort-lib`).
    Explicit,
    /// The `ORT_DYLIB_PATH` environment variable.
    EnvVar,
    /// A project-local install (`.ort/lib`, made by `scripts/install-ort.sh`).
    ProjectLocal,
    /// An installed Python package (`onnxruntime/capi`).
    PythonPackage,
    /// A system library directory.
    System,
}

impl OrtSource {
    /// Whether the user named this library; a failure then is not papered over.
    pub fn is_explicit(self) -> bool {
        matches!(self, OrtSource::Explicit | OrtSource::EnvVar)
    }
}

impl fmt::Display for OrtSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrtSource::Explicit => "--ort-lib",
            OrtSource::EnvVar => "ORT_DYLIB_PATH",
            OrtSource::ProjectLocal => "project-local install",
            OrtSource::PythonPackage => "Python package",
            OrtSource::System => "system library",
        })
    }
}

/// A candidate or loaded ONNX Runtime library and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrtLocation {
    /// The library file.
    pub path: PathBuf,
    /// Which discovery step found it.
    pub source: OrtSource,
}

impl fmt::Display for OrtLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.source)
    }
}

/// The result of scanning for libraries, without loading any.
#[derive(Clone, Debug, Default)]
pub struct OrtSearch {
    /// Library files found, in discovery order, deduplicated.
    pub candidates: Vec<OrtLocation>,
    /// Human-readable descriptions of every place looked in, in order.
    pub searched: Vec<String>,
    /// An explicit source (flag or env var) that named nothing usable; it stops discovery.
    pub explicit_error: Option<(PathBuf, OrtSource, String)>,
}

/// One load attempt made while initialising ONNX Runtime.
#[derive(Clone, Debug)]
pub struct OrtAttempt {
    /// The library tried.
    pub location: OrtLocation,
    /// `None` when it loaded, otherwise the loader's message.
    pub error: Option<String>,
}

/// The ONNX Runtime bound to this process.
#[derive(Clone, Debug)]
pub struct OrtRuntimeInfo {
    /// The library in use.
    pub location: OrtLocation,
    /// Its version, e.g. `1.31.1` (`unknown` when it cannot be told).
    pub version: String,
    /// Every library tried before (and including) the one that loaded.
    pub attempts: Vec<OrtAttempt>,
    /// Places searched.
    pub searched: Vec<String>,
}

pub(crate) struct OrtRuntime {
    pub(crate) info: OrtRuntimeInfo,
    pub(crate) env: ort::environment::Environment,
}

#[derive(Clone)]
enum InitFailure {
    NotFound { searched: Vec<String> },
    Load { path: PathBuf, message: String },
}

impl InitFailure {
    fn to_error(&self) -> EngineError {
        match self {
            InitFailure::NotFound { searched } => EngineError::OrtNotFound {
                searched: searched.clone(),
            },
            InitFailure::Load { path, message } => EngineError::OrtLoad {
                path: path.clone(),
                message: message.clone(),
            },
        }
    }
}

struct FailureCache {
    explicit: Option<PathBuf>,
    failure: InitFailure,
    attempts: Vec<OrtAttempt>,
}

static ORT_RUNTIME: OnceLock<Arc<OrtRuntime>> = OnceLock::new();
static ORT_INIT: Mutex<Option<FailureCache>> = Mutex::new(None);

/// Loads ONNX Runtime once per process, following the discovery order, and returns it.
///
/// A later call with a different explicit library than the one loaded fails with
/// [`EngineError::OrtAlreadyLoaded`]; without an explicit library it returns the loaded one.
pub(crate) fn ort_runtime(explicit: Option<&Path>) -> Result<Arc<OrtRuntime>, EngineError> {
    if let Some(rt) = ORT_RUNTIME.get() {
        return check_same(rt, explicit).map(|()| Arc::clone(rt));
    }
    let mut guard = ORT_INIT.lock().unwrap_or_else(|p| p.into_inner());
    // Another thread may have won while we waited.
    if let Some(rt) = ORT_RUNTIME.get() {
        return check_same(rt, explicit).map(|()| Arc::clone(rt));
    }
    if let Some(cache) = guard.as_ref() {
        if cache.explicit.as_deref() == explicit {
            return Err(cache.failure.to_error());
        }
    }
    let search = search_ort(explicit);
    let mut attempts = Vec::new();
    let failure = match try_load(&search, &mut attempts) {
        Ok((location, env)) => {
            let version = runtime_version(&location.path);
            let rt = Arc::new(OrtRuntime {
                info: OrtRuntimeInfo {
                    location,
                    version,
                    attempts,
                    searched: search.searched.clone(),
                },
                env,
            });
            let rt = Arc::clone(ORT_RUNTIME.get_or_init(|| rt));
            *guard = None;
            return Ok(rt);
        }
        Err(f) => f,
    };
    *guard = Some(FailureCache {
        explicit: explicit.map(Path::to_path_buf),
        failure: failure.clone(),
        attempts,
    });
    Err(failure.to_error())
}

/// Load attempts of the last failed initialisation (for `fieldtune doctor`).
pub(crate) fn failed_attempts() -> Vec<OrtAttempt> {
    let guard = ORT_INIT.lock().unwrap_or_else(|p| p.into_inner());
    guard
        .as_ref()
        .map(|c| c.attempts.clone())
        .unwrap_or_default()
}

fn check_same(rt: &OrtRuntime, explicit: Option<&Path>) -> Result<(), EngineError> {
    let Some(req) = explicit else { return Ok(()) };
    let want = resolve_explicit(req).unwrap_or_else(|| req.to_path_buf());
    if same_file(&want, &rt.info.location.path) {
        Ok(())
    } else {
        Err(EngineError::OrtAlreadyLoaded {
            loaded: rt.info.location.path.clone(),
            requested: req.to_path_buf(),
        })
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn try_load(
    search: &OrtSearch,
    attempts: &mut Vec<OrtAttempt>,
) -> Result<(OrtLocation, ort::environment::Environment), InitFailure> {
    if let Some((path, _, message)) = &search.explicit_error {
        return Err(InitFailure::Load {
            path: path.clone(),
            message: message.clone(),
        });
    }
    let mut last_failure = None;
    for loc in &search.candidates {
        match load_one(&loc.path) {
            Ok(env) => {
                attempts.push(OrtAttempt {
                    location: loc.clone(),
                    error: None,
                });
                return Ok((loc.clone(), env));
            }
            Err(message) => {
                tracing::debug!(path = %loc.path.display(), source = %loc.source, "ONNX Runtime candidate failed: {message}");
                attempts.push(OrtAttempt {
                    location: loc.clone(),
                    error: Some(message.clone()),
                });
                let failure = InitFailure::Load {
                    path: loc.path.clone(),
                    message,
                };
                if loc.source.is_explicit() {
                    return Err(failure);
                }
                last_failure = Some(failure);
            }
        }
    }
    Err(last_failure.unwrap_or_else(|| InitFailure::NotFound {
        searched: search.searched.clone(),
    }))
}

fn load_one(path: &Path) -> Result<ort::environment::Environment, String> {
    let builder = ort::init_from(path).map_err(|e| {
        let message = e.to_string();
        // ort's check of the library's GetVersionString against the compiled API level.
        if message.contains("expected version >=") {
            let min = crate::ORT_MIN_VERSION;
            format!(
                "{message} (fieldtune loads ONNX Runtime {}.{} and newer; docs/JETSON.md lists the Jetson builds)",
                min.major, min.minor
            )
        } else {
            message
        }
    })?;
    builder
        .with_name("fieldtune")
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("library loaded but the environment could not be created: {e}"))
}

/// The version of the loaded library: from ORT's build info (`git-branch=rel-1.31.1`), else
/// from the file name (`libonnxruntime.so.1.31.1`).
fn runtime_version(path: &Path) -> String {
    let info = ort::info();
    if let Some(v) = info
        .split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("git-branch=rel-"))
    {
        return v.to_string();
    }
    version_from_file_name(path).unwrap_or_else(|| "unknown".to_string())
}

fn version_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let v = name.strip_prefix("libonnxruntime.so.").or_else(|| {
        name.strip_prefix("libonnxruntime.")
            .and_then(|s| s.strip_suffix(".dylib"))
    })?;
    if v.split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        Some(v.to_string())
    } else {
        None
    }
}

/// Scans every discovery location (no loading) and returns what exists, in order.
pub fn search_ort(explicit: Option<&Path>) -> OrtSearch {
    let mut s = Search::default();

    // 1. explicit
    if let Some(p) = explicit {
        s.searched.push(format!("--ort-lib {}", p.display()));
        match resolve_explicit(p) {
            Some(lib) => s.push(lib, OrtSource::Explicit),
            None => {
                s.explicit_error = Some((
                    p.to_path_buf(),
                    OrtSource::Explicit,
                    "no such file, or a directory without libonnxruntime".to_string(),
                ));
                return s.finish();
            }
        }
    }

    // 2. ORT_DYLIB_PATH
    match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(v) => {
            let p = PathBuf::from(v);
            s.searched.push(format!("ORT_DYLIB_PATH={}", p.display()));
            match resolve_explicit(&p) {
                Some(lib) => s.push(lib, OrtSource::EnvVar),
                None if explicit.is_none() => {
                    s.explicit_error = Some((
                        p,
                        OrtSource::EnvVar,
                        "ORT_DYLIB_PATH names no such file, or a directory without libonnxruntime"
                            .to_string(),
                    ));
                    return s.finish();
                }
                None => {}
            }
        }
        None => s.searched.push("ORT_DYLIB_PATH (unset)".to_string()),
    }

    // 3. project-local .ort/lib
    if let Ok(cwd) = std::env::current_dir() {
        s.searched
            .push(format!(".ort/lib in {} and its parents", cwd.display()));
        for dir in cwd.ancestors() {
            s.scan_dir(&dir.join(".ort").join("lib"), OrtSource::ProjectLocal);
        }
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        s.searched.push(format!(
            "beside/above the executable in {}",
            exe_dir.display()
        ));
        // Beside the executable: `<exe dir>/libonnxruntime.so*` (a bundled install).
        s.scan_dir(&exe_dir, OrtSource::ProjectLocal);
        for dir in exe_dir.ancestors() {
            s.scan_dir(&dir.join(".ort").join("lib"), OrtSource::ProjectLocal);
        }
    }

    // 4. Python packages
    let site_dirs = python_site_dirs();
    s.searched
        .push("onnxruntime/capi in Python site-packages/dist-packages".to_string());
    for dir in site_dirs {
        s.scan_dir(
            &dir.join("onnxruntime").join("capi"),
            OrtSource::PythonPackage,
        );
    }

    // 5. system
    s.searched
        .push("system library dirs (LD_LIBRARY_PATH, ld.so.conf, /usr/lib, ...)".to_string());
    for dir in system_lib_dirs() {
        s.scan_dir(&dir, OrtSource::System);
    }
    s.finish()
}

#[derive(Default)]
struct Search {
    candidates: Vec<OrtLocation>,
    searched: Vec<String>,
    seen: HashSet<PathBuf>,
    scanned: HashSet<PathBuf>,
    explicit_error: Option<(PathBuf, OrtSource, String)>,
}

impl Search {
    fn push(&mut self, path: PathBuf, source: OrtSource) {
        let key = path.canonicalize().unwrap_or_else(|_| path.clone());
        if self.seen.insert(key) {
            self.candidates.push(OrtLocation { path, source });
        }
    }

    fn scan_dir(&mut self, dir: &Path, source: OrtSource) {
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if !self.scanned.insert(key) {
            return;
        }
        for lib in libs_in_dir(dir) {
            self.push(lib, source);
        }
    }

    fn finish(self) -> OrtSearch {
        OrtSearch {
            candidates: self.candidates,
            searched: self.searched,
            explicit_error: self.explicit_error,
        }
    }
}

/// An explicit path may name the library or a directory holding it.
fn resolve_explicit(p: &Path) -> Option<PathBuf> {
    if p.is_file() {
        Some(p.to_path_buf())
    } else if p.is_dir() {
        libs_in_dir(p).into_iter().next()
    } else {
        None
    }
}

/// Whether a file name is the ONNX Runtime library (not a provider library).
fn is_ort_lib_name(name: &str) -> bool {
    if cfg!(target_os = "windows") {
        return name.eq_ignore_ascii_case("onnxruntime.dll");
    }
    if cfg!(target_os = "macos") {
        return name == "libonnxruntime.dylib"
            || (name.starts_with("libonnxruntime.") && name.ends_with(".dylib"));
    }
    name == "libonnxruntime.so" || name.starts_with("libonnxruntime.so.")
}

/// Library files in `dir`, best first: highest version, the unversioned name last.
fn libs_in_dir(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut libs: Vec<(Vec<u64>, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if !is_ort_lib_name(&name) {
                return None;
            }
            let path = e.path();
            if !path.is_file() {
                return None;
            }
            let ver = version_from_file_name(&path)
                .map(|v| v.split('.').filter_map(|p| p.parse().ok()).collect())
                .unwrap_or_default();
            Some((ver, path))
        })
        .collect();
    libs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    libs.into_iter().map(|(_, p)| p).collect()
}

/// `dir/python3*` entries.
fn python_dirs_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("python3"))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out.reverse(); // newest Python first
    out
}

/// Site-packages and dist-packages directories of the usual Python installs, then those the
/// running `python3` reports (bounded to two seconds).
fn python_site_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = vec![PathBuf::from("/usr/local/lib"), PathBuf::from("/usr/lib")];
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local").join("lib"));
    }
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            roots.push(PathBuf::from(v).join("lib"));
        }
    }
    let mut dirs = Vec::new();
    for root in roots {
        for py in python_dirs_in(&root) {
            dirs.push(py.join("site-packages"));
            dirs.push(py.join("dist-packages"));
        }
    }
    dirs.extend(python_reported_site_dirs());
    dirs
}

fn python_reported_site_dirs() -> Vec<PathBuf> {
    let script = "import site,sys\n\
                  p=[]\n\
                  try:\n p+=site.getsitepackages()\nexcept Exception:\n pass\n\
                  try:\n p.append(site.getusersitepackages())\nexcept Exception:\n pass\n\
                  p+=[x for x in sys.path if x.endswith(('site-packages','dist-packages'))]\n\
                  print('\\n'.join(p))";
    let Ok(mut child) = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return Vec::new();
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Vec::new();
            }
        }
    }
    let Ok(out) = child.wait_with_output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Directories the dynamic loader searches: `LD_LIBRARY_PATH`, `/etc/ld.so.conf` (with
/// `include`s), then the standard ones.
fn system_lib_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    read_ld_so_conf(Path::new("/etc/ld.so.conf"), &mut dirs, 0);
    let triplet = match std::env::consts::ARCH {
        "x86_64" => Some("x86_64-linux-gnu"),
        "aarch64" => Some("aarch64-linux-gnu"),
        "arm" => Some("arm-linux-gnueabihf"),
        _ => None,
    };
    for base in ["/usr/local/lib", "/usr/lib", "/lib", "/usr/lib64", "/lib64"] {
        if let Some(t) = triplet {
            dirs.push(Path::new(base).join(t));
        }
        dirs.push(PathBuf::from(base));
    }
    dirs
}

fn read_ld_so_conf(file: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 4 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(pattern) = line.strip_prefix("include") {
            for f in expand_simple_glob(pattern.trim()) {
                read_ld_so_conf(&f, out, depth + 1);
            }
        } else if line.starts_with('/') {
            out.push(PathBuf::from(line));
        }
    }
}

/// Expands `dir/*.conf`-style patterns (a `*` in the file name only), sorted.
fn expand_simple_glob(pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Some((pre, post)) = name.split_once('*') else {
        return vec![p.to_path_buf()];
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
            })
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lib_names() {
        if cfg!(target_os = "linux") {
            assert!(is_ort_lib_name("libonnxruntime.so"));
            assert!(is_ort_lib_name("libonnxruntime.so.1.31.1"));
            assert!(!is_ort_lib_name("libonnxruntime_providers_cuda.so"));
            assert!(!is_ort_lib_name("libonnxruntime.a"));
        }
    }

    #[test]
    fn version_from_names() {
        assert_eq!(
            version_from_file_name(Path::new("/x/libonnxruntime.so.1.31.1")).as_deref(),
            Some("1.31.1")
        );
        assert_eq!(
            version_from_file_name(Path::new("/x/libonnxruntime.so")),
            None
        );
    }

    #[test]
    fn best_lib_first_in_dir() {
        let dir = std::env::temp_dir().join(format!("ft-engine-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [
            "libonnxruntime.so",
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_cuda.so",
        ] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let libs = libs_in_dir(&dir);
        let names: Vec<_> = libs
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(
                names,
                [
                    "libonnxruntime.so.1.31.1",
                    "libonnxruntime.so.1.9.0",
                    "libonnxruntime.so"
                ]
            );
        }
    }

    #[test]
    fn missing_explicit_path_stops_discovery() {
        let s = search_ort(Some(Path::new("/definitely/not/here/libonnxruntime.so")));
        assert!(s.candidates.is_empty());
        let (p, src, _) = s.explicit_error.expect("explicit error");
        assert_eq!(src, OrtSource::Explicit);
        assert_eq!(p, Path::new("/definitely/not/here/libonnxruntime.so"));
    }
}
