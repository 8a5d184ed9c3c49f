//! A flwr 1.42.0 SuperLink for tests (`.flwr-venv`, as .ci/run and scripts/fleet-demo.sh
//! install it): on a loopback port with in-memory state and its own FLWR_HOME, the `flwr` CLI
//! against it, ended on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn venv_bin(tool: &str) -> PathBuf {
    let p = super::root().join(".flwr-venv/bin").join(tool);
    assert!(
        p.exists(),
        "{} is missing: python3 -m venv .flwr-venv && .flwr-venv/bin/pip install flwr==1.42.0",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A SuperLink on a loopback port (in-memory state), with its own FLWR_HOME, ended on drop.
pub struct SuperLink {
    child: Child,
    pub port: u16,
    pub home: PathBuf,
    log: PathBuf,
}

impl SuperLink {
    pub fn start(dir: &Path, tls: Option<&Path>, extra: &[&str]) -> SuperLink {
        Self::start_on(free_port(), dir, tls, extra)
    }

    /// A SuperLink on `port` (a restart on the port a node knows), its log appended to.
    pub fn start_on(port: u16, dir: &Path, tls: Option<&Path>, extra: &[&str]) -> SuperLink {
        let home = dir.join("flwr-home");
        std::fs::create_dir_all(&home).unwrap();
        let conn = match tls {
            Some(d) => format!("root-certificates = \"{}\"", d.join("ca.pem").display()),
            None => "insecure = true".into(),
        };
        std::fs::write(
            home.join("config.toml"),
            format!("[superlink]\ndefault = \"t\"\n[superlink.t]\naddress = \"127.0.0.1:{port}\"\n{conn}\n"),
        )
        .unwrap();
        let mut cmd = Command::new(venv_bin("flower-superlink"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--disable-runtime-dependency-installation");
        match tls {
            Some(d) => cmd
                .arg("--ssl-certfile")
                .arg(d.join("server.pem"))
                .arg("--ssl-keyfile")
                .arg(d.join("server.key"))
                .arg("--ssl-ca-certfile")
                .arg(d.join("ca.pem")),
            None => cmd.arg("--insecure"),
        };
        let log = dir.join("superlink.log");
        let child = cmd
            .args(extra)
            .env("PATH", path_with_venv())
            .env("FLWR_HOME", &home)
            .stdout(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap();
        let s = SuperLink {
            child,
            port,
            home,
            log,
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "SuperLink did not start: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `flwr` CLI against this SuperLink.
    pub fn flwr(&self, args: &[&str]) -> std::process::Output {
        Command::new(venv_bin("flwr"))
            .args(args)
            .current_dir(super::root())
            .env("PATH", path_with_venv())
            .env("FLWR_HOME", &self.home)
            .output()
            .unwrap()
    }

    /// `flwr run` of the fleet ServerApp (scripts/fleet/app) with `run_config`, streamed; its
    /// stdout and stderr together.
    pub fn run_app(&self, run_config: &str) -> String {
        let o = self.flwr(&[
            "run",
            "scripts/fleet/app",
            "t",
            "--stream",
            "--run-config",
            run_config,
        ]);
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    }
}

impl Drop for SuperLink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn path_with_venv() -> String {
    let bin = super::root().join(".flwr-venv/bin");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}
