//! The node's P-384 key (what Flower makes) and the request signature: `flwr-public-key` is
//! the base64 of the public key's SubjectPublicKeyInfo PEM, `flwr-timestamp` the ISO-8601
//! UTC time of the request (Python's `datetime.isoformat()`: `2026-01-02T03:04:05.678901+00:00`),
//! `flwr-signature` the base64 of the DER ECDSA signature, SHA-256 over the timestamp's bytes.
//! The SuperLink accepts timestamps up to 300 s old (5 s ahead).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use p384::elliptic_curve::sec1::ToEncodedPoint;
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use p384::SecretKey;
use sha2::{Digest, Sha256};

use crate::error::{FleetError, Result};

pub struct NodeKey {
    signing: SigningKey,
    /// The public key as SubjectPublicKeyInfo PEM bytes (what register/activate send).
    pub public_pem: Vec<u8>,
    /// The public key in OpenSSH's format (`ecdsa-sha2-nistp384 AAAA...`), what
    /// `flwr supernode register` reads.
    pub public_ssh: String,
    /// The file holding [`NodeKey::public_ssh`] (`<key file>.pub`), for keys loaded from a
    /// file.
    pub public_path: Option<PathBuf>,
}

impl NodeKey {
    /// Loads the PKCS#8 PEM key at `path`, or creates one there (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<NodeKey> {
        let bad = |reason: String| FleetError::Key {
            path: path.to_path_buf(),
            reason,
        };
        let secret = if path.exists() {
            let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            SecretKey::from_pkcs8_pem(&pem)
                .map_err(|e| bad(format!("not a PKCS#8 PEM P-384 private key ({e})")))?
        } else {
            let secret = SecretKey::random(&mut rand_core::OsRng);
            let pem = secret
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| bad(e.to_string()))?;
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            let mut f = o
                .open(path)
                .map_err(|e| bad(format!("cannot create: {e}")))?;
            f.write_all(pem.as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            tracing::info!(path = %path.display(), "created a new node key (0600)");
            secret
        };
        let mut key = NodeKey::from_secret(secret);
        // The public key beside it, for registering the node with the SuperLink.
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        let pub_path = PathBuf::from(pub_path);
        if std::fs::read(&pub_path).ok().as_deref() != Some(key.public_ssh.as_bytes()) {
            std::fs::write(&pub_path, &key.public_ssh).map_err(|e| FleetError::Key {
                path: pub_path.clone(),
                reason: format!("cannot write the public key: {e}"),
            })?;
        }
        key.public_path = Some(pub_path);
        Ok(key)
    }

    pub fn from_secret(secret: SecretKey) -> NodeKey {
        let public_pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("a P-384 public key encodes")
            .into_bytes();
        // OpenSSH's ECDSA blob: the key type, the curve, the uncompressed point, each a
        // big-endian u32 length and the bytes.
        let point = secret.public_key().to_encoded_point(false);
        let mut blob = Vec::new();
        for part in [&b"ecdsa-sha2-nistp384"[..], b"nistp384", point.as_bytes()] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        NodeKey {
            signing: SigningKey::from(&secret),
            public_pem,
            public_ssh: format!("ecdsa-sha2-nistp384 {} fieldtune-node\n", b64.encode(blob)),
            public_path: None,
        }
    }

    /// The three auth headers for a request made at `at`.
    pub fn headers(&self, at: SystemTime) -> [(&'static str, String); 3] {
        let ts = iso8601(at);
        let digest = Sha256::digest(ts.as_bytes());
        let sig: Signature = self
            .signing
            .sign_prehash(&digest)
            .expect("SHA-256 prehash signs");
        let b64 = base64::engine::general_purpose::STANDARD;
        [
            ("flwr-public-key", b64.encode(&self.public_pem)),
            ("flwr-timestamp", ts),
            ("flwr-signature", b64.encode(sig.to_der().as_bytes())),
        ]
    }
}

/// `at` as Python's `datetime.now(tz=UTC).isoformat()` writes it.
pub fn iso8601(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let us = d.subsec_micros();
    let frac = if us == 0 {
        String::new()
    } else {
        format!(".{us:06}")
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{frac}+00:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// An HTTP `date` header (IMF-fixdate, `Sun, 06 Dec 2026 02:33:25 GMT`).
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut it = s.split_whitespace().skip(1);
    let day: i64 = it.next()?.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mon = it.next()?;
    let month = MONTHS.iter().position(|m| *m == mon)? as i64 + 1;
    let year: i64 = it.next()?.parse().ok()?;
    let hms: Vec<u64> = it
        .next()?
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || it.next() != Some("GMT") {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_like_python_isoformat() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_979_200_123_456);
        assert_eq!(iso8601(t), "2025-12-06T00:00:00.123456+00:00");
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00+00:00"
        );
    }

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Sun, 06 Dec 2026 02:33:25 GMT").unwrap();
        assert_eq!(iso8601(t), "2026-12-06T02:33:25+00:00");
        let t = parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT").unwrap();
        assert_eq!(iso8601(t), "2000-02-29T00:00:00+00:00");
        assert!(parse_http_date("Sun, 06 Foo 2026 02:33:25 GMT").is_none());
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn a_created_key_is_private_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("fleet-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("node.key");
        let _ = std::fs::remove_file(&p);
        let a = NodeKey::load_or_create(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let b = NodeKey::load_or_create(&p).unwrap();
        assert_eq!(a.public_pem, b.public_pem);
        let pubfile = dir.join("node.key.pub");
        assert_eq!(b.public_path.as_deref(), Some(pubfile.as_path()));
        let ssh = std::fs::read_to_string(&pubfile).unwrap();
        assert_eq!(ssh, a.public_ssh);
        // Type, curve and a 97-byte uncompressed point: 4 + 19 + 4 + 8 + 4 + 97 bytes.
        let blob = ssh.split(' ').nth(1).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        assert!(
            ssh.starts_with("ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQ"),
            "{ssh}"
        );
        assert_eq!(b64.decode(blob).unwrap().len(), 136);
        assert!(String::from_utf8_lossy(&a.public_pem).starts_with("-----BEGIN PUBLIC KEY-----\n"));
        std::fs::write(&p, "not a key").unwrap();
        let e = NodeKey::load_or_create(&p).err().unwrap().to_string();
        assert!(e.contains("node.key") && e.contains("PKCS#8"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
