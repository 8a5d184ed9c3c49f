//! The fleet client against a real flwr 1.42.0 SuperLink (`.flwr-venv`, as .ci/run and
//! scripts/fleet-demo.sh install it): TLS with a private CA and a server name apart from the
//! address, SuperNode authentication (a key the SuperLink does not know stops `fieldtune
//! fleet` with one line), a clock outside the SuperLink's window (one line saying by how
//! much), and `train` messages whose arrays do not match the model (error replies naming the
//! array; the node then answers an `evaluate`).

mod common;

use common::superlink::SuperLink;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use fieldtune_fleet::{
    FleetError, FleetHttp, Handler, NodeConfig, NodeKey, Reply, Request, TlsConfig,
};

/// A private CA and a server certificate for DNS:fleet.test and IP:127.0.0.1 (the SuperLink's
/// own processes reach it at 127.0.0.1), made with openssl.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=fleet test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=fleet.test",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:fleet.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

struct Nothing;

impl Handler for Nothing {
    fn handle(&mut self, _: &Request) -> Result<Reply, String> {
        Err("no messages expected".into())
    }
}

/// Runs a node until it has been idle for a second.
fn node(http: &FleetHttp) -> fieldtune_fleet::Result<usize> {
    let cfg = NodeConfig {
        heartbeat_s: 30.0,
        poll_s: 0.2,
        idle_exit_s: Some(1.0),
        ..NodeConfig::default()
    };
    fieldtune_fleet::run_node(http, &cfg, &mut Nothing, &AtomicBool::new(false))
}

fn fleet_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let root = common::root();
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "{body}\nheartbeat_s = 10.0\nmodel = \"{m}\"\nlabeled = \"{m}/anchors\"\nunlabeled = \"{m}/anchors\"\n\
             slice = 0\nslice_of = 1\nrecipe = \"uda-im\"\nsteps = 2\nseed = 0\nsend = \"all\"\nidle_exit_s = 60.0\n",
            m = root.join("models/mnist-cnn").display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn tls_with_a_server_name_node_keys_and_the_clock_window() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d);
    let link = SuperLink::start(d, Some(d), &["--enable-supernode-auth"]);
    let known = NodeKey::load_or_create(&d.join("known.key")).unwrap();
    let o = link.flwr(&[
        "supernode",
        "register",
        d.join("known.key.pub").to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "flwr supernode register: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let tls = |server_name: Option<&str>| TlsConfig {
        ca: Some(d.join("ca.pem")),
        server_name: server_name.map(str::to_string),
        insecure: false,
    };
    let addr = format!("127.0.0.1:{}", link.port);

    // The TLS name is the server name, not the address: a name the certificate does not
    // carry is refused.
    let http = FleetHttp::new(
        &addr,
        &tls(Some("other.test")),
        NodeKey::load_or_create(&d.join("known.key")).unwrap(),
    )
    .unwrap();
    let e = node(&http).unwrap_err().to_string();
    assert!(
        e.contains("other.test") && e.to_lowercase().contains("certificate"),
        "{e}"
    );

    // A node key the SuperLink does not know: `fieldtune fleet` stops with one line.
    let cfg = fleet_config(
        d,
        "stranger.toml",
        &format!(
            "superlink = \"{addr}\"\nserver_name = \"fleet.test\"\nca = \"{}\"\nkey = \"{}\"",
            d.join("ca.pem").display(),
            d.join("stranger.key").display()
        ),
    );
    let o = common::fieldtune(&["fleet", "--config", cfg.to_str().unwrap()]);
    let (_, err) = common::text(&o);
    assert!(!o.status.success());
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("does not know this node's public key")
            && lines[0].contains("stranger.key.pub")
            && lines[0].contains("flwr supernode register"),
        "{err}"
    );

    // The registered key with a clock 10 minutes slow, then 1 minute fast: refused, saying so.
    let mut http = FleetHttp::new(&addr, &tls(Some("fleet.test")), known).unwrap();
    http.clock = || SystemTime::now() - Duration::from_secs(600);
    let e = node(&http).unwrap_err();
    assert!(matches!(e, FleetError::Status { status: 401, .. }), "{e}");
    assert!(e.to_string().contains("s behind"), "{e}");
    http.clock = || SystemTime::now() + Duration::from_secs(60);
    let e = node(&http).unwrap_err().to_string();
    assert!(e.contains("s ahead"), "{e}");

    // The registered key, the right clock and the server name: the node joins and leaves.
    http.clock = SystemTime::now;
    assert_eq!(node(&http).expect("node with the registered key"), 0);
    assert!(
        link.log_text().contains("Activated node_id"),
        "{}",
        link.log_text()
    );
}

#[test]
fn arrays_for_another_model_get_an_error_reply_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let link = SuperLink::start(d, None, &[]);
    let cfg = fleet_config(
        d,
        "node.toml",
        &format!(
            "superlink = \"127.0.0.1:{}\"\ninsecure = true\nkey = \"{}\"",
            link.port,
            d.join("node.key").display()
        ),
    );
    let client_log = d.join("client.log");
    let mut client = Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .args(["fleet", "--config", cfg.to_str().unwrap()])
        .current_dir(common::root())
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&client_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rc = format!(
        "mode='wrong-arrays' fieldtune='{}' fleet-config='{}' round-timeout=60.0",
        env!("CARGO_BIN_EXE_fieldtune"),
        cfg.display()
    );
    let out = link.run_app(&rc);
    let _ = client.kill();
    let _ = client.wait();
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("wrong-input:")).collect();
    assert_eq!(lines.len(), 3, "{out}\n{}", link.log_text());
    let name = "classifier.0.bias";
    assert!(
        lines[0].contains(&format!("array '{name}' has shape [3, 5]")),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("array 'head.extra.weight' is not a parameter of this model"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("anchor-accuracy"), "{}", lines[2]);
    let client_out = std::fs::read_to_string(&client_log).unwrap();
    assert!(
        client_out.contains("fleet: evaluate round 1: anchor accuracy"),
        "{client_out}"
    );
}
