//! Who may read the agent's API: the Prometheus exporters' web configuration file
//! (exporter-toolkit's `--web.config.file`: `tls_server_config`, `basic_auth_users` with
//! bcrypt hashes), given with `--web-config`, and a shared bearer token for in-cluster
//! scrapers (`--bearer-token-file`). The reports hold every pod's stacks, paths and memory
//! figures: once either is configured, every endpoint but `/healthz` needs credentials.
//!
//! Parsing and the credential check are pure; reading the files is [`WebConfig::load`].
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use base64::Engine as _;
use serde::Deserialize;

/// The web configuration file, as exporter-toolkit defines it. Settings it has that leak
/// does not implement are refused, never ignored: a security setting silently dropped is
/// worse than a start-up error.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebConfigFile {
    /// TLS for the listener.
    #[serde(default)]
    pub tls_server_config: Option<TlsServerConfig>,
    /// User name -> bcrypt hash of the password.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
}

/// `tls_server_config`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// The server's certificate chain (PEM); relative to the config file's directory.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// `NoClientCert` (default), `RequestClientCert`, `RequireAnyClientCert`,
    /// `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert`.
    #[serde(default)]
    pub client_auth_type: Option<String>,
    /// CA bundle client certificates are verified against.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// `TLS12` (default) or `TLS13`.
    #[serde(default)]
    pub min_version: Option<String>,
}

/// Whether clients must present certificates, and whether those are verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates.
    None,
    /// Verified when given.
    VerifyIfGiven,
    /// Required and verified.
    Require,
}

impl WebConfigFile {
    /// Parses the file's text.
    ///
    /// # Errors
    /// Not YAML of this shape (unknown keys included), or settings that contradict each
    /// other; the message says what to change.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed: Self = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if let Some(tls) = &parsed.tls_server_config {
            tls.client_auth()?;
            match tls.min_version.as_deref() {
                None | Some("TLS12" | "TLS13") => {}
                Some(v) => return Err(format!("min_version {v:?}: use TLS12 or TLS13")),
            }
        }
        for (user, hash) in &parsed.basic_auth_users {
            // A plain password where a hash belongs would let nobody in: say so now.
            if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
                return Err(format!(
                    "basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                ));
            }
        }
        Ok(parsed)
    }
}

impl TlsServerConfig {
    /// The client certificate policy.
    ///
    /// # Errors
    /// An unknown type, one that verifies without `client_ca_file`, or one that would
    /// accept unverified certificates.
    pub fn client_auth(&self) -> Result<ClientAuth, String> {
        let auth = match self.client_auth_type.as_deref() {
            None | Some("" | "NoClientCert") => ClientAuth::None,
            Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
            Some("RequireAndVerifyClientCert") => ClientAuth::Require,
            Some(t @ ("RequestClientCert" | "RequireAnyClientCert")) => {
                return Err(format!(
                    "client_auth_type {t}: certificates accepted unverified are not supported; \
                     use RequireAndVerifyClientCert"
                ));
            }
            Some(t) => return Err(format!("client_auth_type {t:?} is not a known type")),
        };
        if auth != ClientAuth::None && self.client_ca_file.is_none() {
            return Err("client_auth_type verifies client certificates: set client_ca_file".into());
        }
        Ok(auth)
    }
}

/// Credentials in an `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// `Basic` user and password.
    Basic(String, String),
    /// `Bearer` token.
    Bearer(String),
}

/// Parses an `Authorization` header value; `None` if it is neither scheme or malformed.
#[must_use]
pub fn parse_authorization(value: &str) -> Option<Credentials> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some(Credentials::Basic(user.to_owned(), password.to_owned()))
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Some(Credentials::Bearer(rest.to_owned()))
    } else {
        None
    }
}

/// Equal bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Successful basic credentials remembered, so a scrape every few seconds costs one bcrypt
/// verification (tens of milliseconds) once, not every time. Bounded: a flood of distinct
/// correct credentials cannot grow it.
const CACHE_MAX: usize = 64;

/// Who may read: the users and the token; open when neither is configured.
#[derive(Debug, Default)]
pub struct Access {
    users: BTreeMap<String, String>,
    bearer: Option<String>,
    verified: Mutex<Vec<(String, String)>>,
}

impl Access {
    /// Access for `users` (name -> bcrypt hash) and a bearer `token`.
    #[must_use]
    pub fn new(users: BTreeMap<String, String>, bearer: Option<String>) -> Self {
        Self { users, bearer, verified: Mutex::new(Vec::new()) }
    }

    /// Whether anything is required.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.users.is_empty() && self.bearer.is_none()
    }

    /// The `WWW-Authenticate` challenge of a refusal.
    #[must_use]
    pub fn challenge(&self) -> &'static str {
        if self.users.is_empty() { "Bearer" } else { "Basic realm=\"leak\", charset=\"UTF-8\"" }
    }

    /// Whether the request with `authorization` (its `Authorization` header) may read. Blocks
    /// for a bcrypt verification the first time a user's password is checked.
    #[must_use]
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        match authorization.and_then(parse_authorization) {
            Some(Credentials::Bearer(token)) => self
                .bearer
                .as_ref()
                .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())),
            Some(Credentials::Basic(user, password)) => {
                let Some(hash) = self.users.get(&user) else { return false };
                let mut cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
                let known = cache.iter().any(|(u, p)| {
                    u == &user && constant_time_eq(p.as_bytes(), password.as_bytes())
                });
                if known {
                    return true;
                }
                drop(cache);
                if !bcrypt::verify(&password, hash).unwrap_or(false) {
                    return false;
                }
                cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.len() >= CACHE_MAX {
                    cache.remove(0);
                }
                cache.push((user, password));
                true
            }
            None => false,
        }
    }
}

/// The agent API's access settings, loaded.
#[derive(Clone, Default)]
pub struct WebConfig {
    /// TLS for the listener, if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Who may read.
    pub access: Arc<Access>,
}

impl WebConfig {
    /// Reads `--web-config` (if given) and `--bearer-token-file` (if given).
    ///
    /// # Errors
    /// A file that cannot be read or parsed, a certificate or key that does not load; the
    /// message names the file.
    pub fn load(
        web_config: Option<&Path>,
        bearer_token_file: Option<&Path>,
    ) -> Result<Self, String> {
        let file = match web_config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read --web-config {}: {e}", p.display()))?;
                WebConfigFile::parse(&text)
                    .map_err(|e| format!("--web-config {}: {e}", p.display()))?
            }
            None => WebConfigFile::default(),
        };
        let bearer = match bearer_token_file {
            Some(p) => {
                let token = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read --bearer-token-file {}: {e}", p.display()))?;
                let token = token.trim().to_owned();
                if token.is_empty() {
                    return Err(format!("--bearer-token-file {} is empty", p.display()));
                }
                Some(token)
            }
            None => None,
        };
        // Paths in the file are relative to its directory, as exporter-toolkit reads them.
        let base = web_config.and_then(Path::parent).unwrap_or(Path::new("."));
        let tls = file
            .tls_server_config
            .as_ref()
            .map(|t| tls_config(t, base).map(Arc::new))
            .transpose()?;
        Ok(Self { tls, access: Arc::new(Access::new(file.basic_auth_users, bearer)) })
    }
}

/// The rustls server configuration of `tls` (paths under `base`).
fn tls_config(tls: &TlsServerConfig, base: &Path) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let path = |p: &Path| base.join(p);
    let (cert_file, key_file) = (path(&tls.cert_file), path(&tls.key_file));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .and_then(Iterator::collect)
        .map_err(|e| format!("cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("cert_file {}: no certificate in it", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| format!("key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version.as_deref() {
        Some("TLS13") => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS12, &rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match (tls.client_auth()?, &tls.client_ca_file) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let ca = path(ca);
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&ca)
                .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?
            {
                let cert = cert.map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
                roots.add(cert).map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!("cert_file {} and key_file {}: {e}", cert_file.display(), key_file.display())
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporter_toolkit_files_parse_and_unsupported_settings_are_refused() {
        let f = WebConfigFile::parse(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: $2y$10$abcdefghijklmnopqrstuu5Ozp7ZqX3Y8Rkq1o0l3k2pYjJ1nE1W\n",
        )
        .unwrap();
        assert_eq!(f.tls_server_config.unwrap().cert_file, PathBuf::from("server.crt"));
        assert!(f.basic_auth_users.contains_key("prometheus"));
        assert_eq!(WebConfigFile::parse("").unwrap(), WebConfigFile::default());
        let err = WebConfigFile::parse("http_server_config:\n  http2: false\n").unwrap_err();
        assert!(err.contains("http_server_config"), "{err}");
        let err = WebConfigFile::parse("basic_auth_users:\n  alice: secret\n").unwrap_err();
        assert!(err.contains("not a bcrypt hash"), "{err}");
        let tls = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        let err =
            WebConfigFile::parse(&format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"))
                .unwrap_err();
        assert!(err.contains("client_ca_file"), "{err}");
        let err = WebConfigFile::parse(&format!("{tls}  client_auth_type: RequireAnyClientCert\n"))
            .unwrap_err();
        assert!(err.contains("unverified"), "{err}");
        assert!(WebConfigFile::parse(&format!("{tls}  min_version: TLS10\n")).is_err());
        assert!(WebConfigFile::parse("tls_server_config: [1, 2]\n").is_err());
    }

    #[test]
    fn authorization_headers_parse() {
        // "alice:pa:ss" (a colon in the password is the password's).
        assert_eq!(
            parse_authorization("Basic YWxpY2U6cGE6c3M="),
            Some(Credentials::Basic("alice".into(), "pa:ss".into()))
        );
        assert_eq!(parse_authorization("bearer  tok"), Some(Credentials::Bearer("tok".into())));
        for bad in ["", "Basic", "Basic !!!", "Basic YWxpY2U=", "Bearer ", "Digest x", "Basic /w=="]
        {
            assert_eq!(parse_authorization(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_the_right_credentials_are_let_in() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = BTreeMap::from([("prom".to_owned(), hash)]);
        let access = Access::new(users, Some("t0ken".into()));
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(!access.is_open());
        assert!(!access.allows(None));
        assert!(access.allows(Some(&basic("prom", "s3cret"))));
        // Again, from the cache.
        assert!(access.allows(Some(&basic("prom", "s3cret"))));
        assert!(!access.allows(Some(&basic("prom", "wrong"))));
        assert!(!access.allows(Some(&basic("other", "s3cret"))));
        assert!(access.allows(Some("Bearer t0ken")));
        assert!(!access.allows(Some("Bearer t0ke")));
        assert!(!access.allows(Some("Bearer t0ken2")));
        assert!(Access::default().allows(None), "nothing configured: open");
        assert_eq!(Access::new(BTreeMap::new(), Some("x".into())).challenge(), "Bearer");
    }
}
