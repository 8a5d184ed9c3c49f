//! The Fleet API transport: `POST {superlink}/v1/fleet/<call>` with a protobuf body
//! (`content-type: application/protobuf`), signed by the node key, with flwr's runtime
//! version headers. HTTPS with rustls (a CA file for a private CA); plain HTTP only to a
//! loopback address. Response bodies are read up to a size limit.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use prost::Message;
use ureq::tls::{Certificate, RootCerts, TlsConfig as UreqTls};

use crate::error::{FleetError, Result};
use crate::keys::NodeKey;
use crate::FLWR_VERSION;

/// How to reach the SuperLink.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the SuperLink's certificate (default: the web PKI roots).
    pub ca: Option<PathBuf>,
    /// Plain HTTP; refused unless the SuperLink is on a loopback address.
    pub insecure: bool,
}

pub struct FleetHttp {
    agent: ureq::Agent,
    base: String,
    pub key: NodeKey,
    /// Largest response accepted (pulled objects included).
    pub max_response: u64,
    /// Added to the clock for the signed timestamp (tests of the server's window).
    pub clock_skew: i64,
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

impl FleetHttp {
    /// `superlink` is `host:port` or a URL (`https://host:port`).
    pub fn new(superlink: &str, tls: &TlsConfig, key: NodeKey) -> Result<FleetHttp> {
        let base = if superlink.contains("://") {
            superlink.trim_end_matches('/').to_string()
        } else if tls.insecure {
            format!("http://{superlink}")
        } else {
            format!("https://{superlink}")
        };
        let host = base
            .split("://")
            .nth(1)
            .and_then(|r| r.rsplit_once(':').map(|(h, _)| h).or(Some(r)))
            .unwrap_or("");
        if base.starts_with("http://") && !(tls.insecure && is_loopback(host)) {
            return Err(FleetError::Config(format!(
                "SuperLink {base}: plain HTTP is allowed only with insecure = true and a loopback address; \
                 use https:// (and ca = \"...\" for a private CA)"
            )));
        }
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
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .tls_config(tcfg.build())
            .build()
            .into();
        Ok(FleetHttp {
            agent,
            base,
            key,
            max_response: 256 << 20,
            clock_skew: 0,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One Fleet API call.
    pub fn call<Req: Message, Resp: Message + Default>(
        &self,
        call: &str,
        req: &Req,
    ) -> Result<Resp> {
        let url = format!("{}/v1/fleet/{call}", self.base);
        let now = if self.clock_skew >= 0 {
            SystemTime::now() + Duration::from_secs(self.clock_skew as u64)
        } else {
            SystemTime::now() - Duration::from_secs(self.clock_skew.unsigned_abs())
        };
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
                theirs: m.to_str().unwrap_or("?").to_string(),
                ours: FLWR_VERSION,
            });
        }
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(self.max_response)
            .read_to_vec()
            .map_err(|e| FleetError::Http {
                url: url.clone(),
                reason: format!("response body: {e} (limit {} bytes)", self.max_response),
            })?;
        if status == 401 {
            return Err(FleetError::Status {
                url,
                status,
                body:
                    "the SuperLink refused this node's signature: the node key is not the one it \
                       knows, or this device's clock is more than 300 s off UTC"
                        .into(),
            });
        }
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
            return Err(FleetError::Status {
                url,
                status,
                body: text,
            });
        }
        Resp::decode(&body[..]).map_err(|e| FleetError::Http {
            url,
            reason: format!("response is not the expected protobuf: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        let key = || NodeKey::from_secret(p384::SecretKey::random(&mut rand_core::OsRng));
        let insecure = TlsConfig {
            ca: None,
            insecure: true,
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
}
