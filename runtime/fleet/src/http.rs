//! The Fleet API transport: `POST {superlink}/v1/fleet/<call>` with a protobuf body
//! (`content-type: application/protobuf`), signed by the node key, with flwr's runtime
//! version headers. HTTPS with rustls (a CA file for a private CA, and a TLS server name
//! apart from the address when the certificate names another host); plain HTTP only to a
//! loopback address. Response bodies are read up to a size limit.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use prost::Message;
use ureq::http::Uri;
use ureq::tls::{Certificate, RootCerts, TlsConfig as UreqTls};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use crate::error::{FleetError, Result};
use crate::keys::NodeKey;
use crate::FLWR_VERSION;

/// How to reach the SuperLink.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the SuperLink's certificate (default: the web PKI roots).
    pub ca: Option<PathBuf>,
    /// The name the SuperLink's certificate must carry (SNI and verification), when it is
    /// not the host of the address (e.g. an IP address or an internal name).
    pub server_name: Option<String>,
    /// Plain HTTP; refused unless the SuperLink is on a loopback address.
    pub insecure: bool,
}

pub struct FleetHttp {
    agent: ureq::Agent,
    base: String,
    /// Where the TCP connection goes (`host:port` of the configured address).
    connect: String,
    pub key: NodeKey,
    /// Largest response accepted (pulled objects included).
    pub max_response: u64,
    /// The clock that dates each signed request (tests move it to check the SuperLink's
    /// window).
    pub clock: fn() -> SystemTime,
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Resolves every URL to one fixed `host:port`: the configured address, while the URL
/// carries the TLS server name.
#[derive(Debug)]
struct Pinned(String);

impl Resolver for Pinned {
    fn resolve(
        &self,
        _uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
        let uri: Uri = format!("https://{}/", self.0)
            .parse()
            .map_err(|_| ureq::Error::HostNotFound)?;
        DefaultResolver::default().resolve(&uri, config, timeout)
    }
}

impl FleetHttp {
    /// The base URL, host and port of `superlink` (`host:port` or a URL), with the rule that
    /// plain HTTP goes only to a loopback address; nothing is connected.
    pub fn check_address(superlink: &str, tls: &TlsConfig) -> Result<(String, String, String)> {
        let base = if superlink.contains("://") {
            superlink.trim_end_matches('/').to_string()
        } else if tls.insecure {
            format!("http://{superlink}")
        } else {
            format!("https://{superlink}")
        };
        let authority = base.split("://").nth(1).unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.to_string()),
            _ if base.starts_with("http://") => (authority.to_string(), "80".to_string()),
            _ => (authority.to_string(), "443".to_string()),
        };
        if host.is_empty() {
            return Err(FleetError::Config(format!(
                "SuperLink {base}: the address has no host"
            )));
        }
        if base.starts_with("http://") && !(tls.insecure && is_loopback(&host)) {
            return Err(FleetError::Config(format!(
                "SuperLink {base}: plain HTTP is allowed only with insecure = true and a loopback address; \
                 use https:// (and ca = \"...\" for a private CA)"
            )));
        }
        Ok((base, host, port))
    }

    /// `superlink` is `host:port` or a URL (`https://host:port`).
    pub fn new(superlink: &str, tls: &TlsConfig, key: NodeKey) -> Result<FleetHttp> {
        let (base, host, port) = Self::check_address(superlink, tls)?;
        let connect = format!("{host}:{port}");
        let mut tcfg = UreqTls::builder();
        if let Some(ca) = &tls.ca {
            let pem = std::fs::read(ca).map_err(|e| FleetError::Key {
                path: ca.clone(),
                reason: format!("cannot read the CA file: {e}"),
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| FleetError::Key {
                path: ca.clone(),
                reason: format!("not a PEM certificate: {e}"),
            })?;
            tcfg = tcfg.root_certs(RootCerts::new_with_certs(&[cert]));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .tls_config(tcfg.build())
            .build();
        let (agent, base) = match &tls.server_name {
            None => (config.into(), base),
            Some(name) => {
                if base.starts_with("http://") {
                    return Err(FleetError::Config(format!(
                        "SuperLink {base}: server_name = \"{name}\" is a TLS setting; plain HTTP has none"
                    )));
                }
                if rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
                    || name.contains(':')
                {
                    return Err(FleetError::Config(format!(
                        "server_name = \"{name}\": not a DNS name or IP address"
                    )));
                }
                // The URL names the server (SNI, certificate check, Host); the connection
                // goes to the configured address.
                let agent = ureq::Agent::with_parts(
                    config,
                    ureq::unversioned::transport::DefaultConnector::default(),
                    Pinned(connect.clone()),
                );
                (agent, format!("https://{name}:{port}"))
            }
        };
        Ok(FleetHttp {
            agent,
            base,
            connect,
            key,
            max_response: 256 << 20,
            clock: SystemTime::now,
        })
    }

    /// The URL the requests go to (its host is the TLS server name).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The `host:port` the connection goes to.
    pub fn connect(&self) -> &str {
        &self.connect
    }

    /// One Fleet API call.
    pub fn call<Req: Message, Resp: Message + Default>(
        &self,
        call: &str,
        req: &Req,
    ) -> Result<Resp> {
        let url = format!("{}/v1/fleet/{call}", self.base);
        let now = (self.clock)();
        let mut r = self
            .agent
            .post(&url)
            .header("content-type", "application/protobuf")
            .header("flwr-package-name", "flwr")
            .header("flwr-package-version", FLWR_VERSION)
            .header("flwr-component-name", "SuperNode");
        for (k, v) in self.key.headers(now) {
            r = r.header(k, v);
        }
        let mut resp = r
            .send(&req.encode_to_vec()[..])
            .map_err(|e| FleetError::Http {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if let Some(m) = resp.headers().get("flwr-version-incompatibility-message") {
            return Err(FleetError::Version {
                url,
                detail: m.to_str().unwrap_or("?").to_string(),
                ours: FLWR_VERSION,
            });
        }
        let status = resp.status().as_u16();
        let server_date = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::keys::parse_http_date);
        let body = resp
            .body_mut()
            .with_config()
            .limit(self.max_response)
            .read_to_vec()
            .map_err(|e| FleetError::Http {
                url: url.clone(),
                reason: format!("response body: {e} (limit {} bytes)", self.max_response),
            })?;
        if status == 200 {
            return Resp::decode(&body[..]).map_err(|e| FleetError::Http {
                url,
                reason: format!("response is not the expected protobuf: {e}"),
            });
        }
        Err(refusal(url, status, &body, now, server_date))
    }
}

/// Flower's JSON error body: `{"code": N, "detail": "...", "extra": "..."}`.
fn flower_error(body: &[u8]) -> Option<(i64, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("code")?.as_i64()?;
    let text = |k: &str| v.get(k).and_then(|d| d.as_str()).map(str::to_string);
    let detail = match (text("detail"), text("extra")) {
        (Some(d), Some(x)) => format!("{d} {x}"),
        (d, x) => d.or(x).unwrap_or_default(),
    };
    Some((code, detail))
}

/// Flower's error code of a refused version (`RUNTIME_VERSION_INCOMPATIBLE`).
const CODE_VERSION: i64 = 1001;

/// The error of a call the SuperLink answered with `status`: another flwr version, a
/// refused signature (this device's clock against the response's `date`, else the key), or
/// the status with Flower's detail.
fn refusal(
    url: String,
    status: u16,
    body: &[u8],
    sent_at: SystemTime,
    server_date: Option<SystemTime>,
) -> FleetError {
    let fe = flower_error(body);
    if let Some((CODE_VERSION, detail)) = &fe {
        return FleetError::Version {
            url,
            detail: detail.clone(),
            ours: FLWR_VERSION,
        };
    }
    if status == 404 {
        return FleetError::Version {
            url,
            detail: "HTTP 404: no such Fleet API call here".into(),
            ours: FLWR_VERSION,
        };
    }
    if status == 401 {
        // The SuperLink accepts a timestamp up to 300 s old and 5 s ahead; its `date` has
        // whole seconds, hence the one-second margins.
        let ahead = server_date.map(|d| match sent_at.duration_since(d) {
            Ok(a) => a.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        });
        let body = match ahead {
            Some(a) if a >= 6.0 => format!(
                "the SuperLink refused this node's signature: this device's clock is {a:.0} s ahead of \
                 the SuperLink's (it accepts 5 s); set the clock (NTP)"
            ),
            Some(a) if a <= -304.0 => format!(
                "the SuperLink refused this node's signature: this device's clock is {:.0} s behind \
                 the SuperLink's (it accepts 300 s); set the clock (NTP)",
                -a
            ),
            _ => "the SuperLink refused this node's signature: this node's key is not the one it \
                  knows for this node (a new key for a registered node, or the SuperLink lost its state)"
                .into(),
        };
        return FleetError::Status { url, status, body };
    }
    let body = match fe {
        Some((code, detail)) => format!("Flower error {code}: {detail}"),
        None => String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned(),
    };
    FleetError::Status { url, status, body }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};

    use super::*;
    use crate::proto;

    fn key() -> NodeKey {
        NodeKey::from_secret(p384::SecretKey::random(&mut rand_core::OsRng))
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let insecure = TlsConfig {
            insecure: true,
            ..TlsConfig::default()
        };
        assert!(FleetHttp::new("127.0.0.1:9092", &insecure, key()).is_ok());
        assert!(FleetHttp::new("localhost:9092", &insecure, key()).is_ok());
        let e = FleetHttp::new("10.0.0.5:9092", &insecure, key())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("loopback"), "{e}");
        let e = FleetHttp::new("http://127.0.0.1:9092", &TlsConfig::default(), key())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("insecure"), "{e}");
    }

    #[test]
    fn the_server_name_is_the_url_host_and_the_address_is_where_it_connects() {
        let named = |n: &str| TlsConfig {
            server_name: Some(n.into()),
            ..TlsConfig::default()
        };
        let h = FleetHttp::new("10.0.0.5:8443", &named("link.example"), key()).unwrap();
        assert_eq!(h.base(), "https://link.example:8443");
        assert_eq!(h.connect(), "10.0.0.5:8443");
        let h = FleetHttp::new("https://10.0.0.5", &named("link.example"), key()).unwrap();
        assert_eq!(
            (h.base(), h.connect()),
            ("https://link.example:443", "10.0.0.5:443")
        );
        let h = FleetHttp::new("link.example:8443", &TlsConfig::default(), key()).unwrap();
        assert_eq!(
            (h.base(), h.connect()),
            ("https://link.example:8443", "link.example:8443")
        );
        for bad in ["not a name", "link.example:8443", ""] {
            let e = FleetHttp::new("10.0.0.5:8443", &named(bad), key())
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("server_name") && e.contains(bad), "{e}");
        }
        let plain = TlsConfig {
            insecure: true,
            ..named("link.example")
        };
        let e = FleetHttp::new("127.0.0.1:8443", &plain, key())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("server_name") && e.contains("plain HTTP"), "{e}");
    }

    /// Answers one request on a loopback port with `status`, `headers` and `body`.
    fn one_answer(status: &str, headers: &str, body: &str) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let reply = format!(
            "HTTP/1.1 {status}\r\n{headers}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            r.read_exact(&mut vec![0; len]).unwrap();
            c.write_all(reply.as_bytes()).unwrap();
        });
        addr
    }

    fn register(addr: &str) -> FleetError {
        let insecure = TlsConfig {
            insecure: true,
            ..TlsConfig::default()
        };
        let h = FleetHttp::new(addr, &insecure, key()).unwrap();
        h.call::<_, proto::RegisterNodeFleetResponse>(
            "register-node",
            &proto::RegisterNodeFleetRequest::default(),
        )
        .err()
        .unwrap()
    }

    #[test]
    fn another_flwr_version_is_named() {
        // As flwr's HTTP SuperLinks refuse a peer of another minor version (error 1001).
        let body = r#"{"code":1001,"detail":"Runtime version compatibility check failed.","extra":"Peer version 1.42.0 differs from local version 1.44.0."}"#;
        let e = register(&one_answer("412 Precondition Failed", "", body));
        let m = e.to_string();
        assert!(matches!(e, FleetError::Version { .. }), "{m}");
        assert!(m.contains("1.44.0") && m.contains("flwr 1.42.0"), "{m}");
        // The gRPC-era header.
        let e = register(&one_answer(
            "200 OK",
            "flwr-version-incompatibility-message: SuperLink is flwr 1.36.0\r\n",
            "",
        ));
        assert!(e.to_string().contains("SuperLink is flwr 1.36.0"), "{e}");
        // No such call: not this version's Fleet API.
        let e = register(&one_answer(
            "404 Not Found",
            "",
            r#"{"detail":"Not Found"}"#,
        ));
        assert!(matches!(e, FleetError::Version { .. }), "{e}");
        // Other refusals keep Flower's code and detail.
        let body = r#"{"code":2004,"detail":"Failed to activate SuperNode."}"#;
        let e = register(&one_answer("412 Precondition Failed", "", body));
        assert!(
            e.to_string()
                .contains("Flower error 2004: Failed to activate SuperNode."),
            "{e}"
        );
    }

    #[test]
    fn a_refused_signature_says_whether_the_clock_or_the_key_is_wrong() {
        let server = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let said = |offset: i64| {
            let sent = if offset >= 0 {
                server + Duration::from_secs(offset as u64)
            } else {
                server - Duration::from_secs(offset.unsigned_abs())
            };
            refusal("u".into(), 401, b"{}", sent, Some(server)).to_string()
        };
        assert!(said(-600).contains("600 s behind"), "{}", said(-600));
        assert!(said(60).contains("60 s ahead"), "{}", said(60));
        for ok in [-200, 0, 2] {
            assert!(said(ok).contains("key"), "{}", said(ok));
        }
        let e = refusal("u".into(), 401, b"", server, None).to_string();
        assert!(e.contains("key"), "{e}");
    }
}
