//! TLS for `https` listeners, with rustls on the `ring` provider: TLS 1.2 and
//! 1.3, ALPN `h2` and `http/1.1`, a certificate per virtual host chosen by
//! SNI; plus the self-signed certificates of `psd cert`. This module reads
//! PEM files and builds rustls configurations; it never accepts a socket.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, Host};

/// Loads a certificate chain and its private key from PEM files.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let pair = CertifiedKey::new(chain, signer);
    pair.keys_match().map_err(|e| {
        format!(
            "{} does not belong to {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(pair))
}

/// Chooses a certificate by SNI among the virtual hosts of one listener.
#[derive(Debug)]
struct ByServerName {
    names: HashMap<String, Arc<CertifiedKey>>,
    wildcards: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        self.names
            .get(&name)
            .or_else(|| {
                self.wildcards
                    .iter()
                    .find(|(suffix, _)| name.ends_with(suffix.as_str()))
                    .map(|(_, key)| key)
            })
            .or(self.default.as_ref())
            .cloned()
    }
}

/// The rustls configuration of an https listener: each virtual host on it
/// with its own certificate (or the server config's), the first as default.
pub fn server_config(
    config: &Config,
    listener: SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let main_pair = pair_of(&config.main)?;
    let mut resolver = ByServerName {
        names: HashMap::new(),
        wildcards: vec![],
        default: None,
    };
    for vhost in config.vhosts.iter().filter(|v| v.serves(listener)) {
        let Some(pair) = pair_of(&vhost.host)?.or_else(|| main_pair.clone()) else {
            continue;
        };
        resolver.default.get_or_insert_with(|| pair.clone());
        let names = vhost
            .host
            .server_name
            .iter()
            .map(|n| n.split(':').next().unwrap_or(n))
            .chain(vhost.host.aliases.iter().map(String::as_str));
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => resolver.wildcards.push((suffix.to_string(), pair.clone())),
                None => {
                    resolver.names.entry(name).or_insert_with(|| pair.clone());
                }
            }
        }
    }
    if resolver.default.is_none() {
        resolver.default = main_pair;
    }
    if resolver.default.is_none() {
        return Err(format!("https listener {listener} has no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

fn pair_of(host: &Host) -> Result<Option<Arc<CertifiedKey>>, String> {
    match (&host.certificate, &host.certificate_key) {
        (Some((cert, _)), Some((key, _))) => load_pair(cert, key).map(Some),
        _ => Ok(None),
    }
}

/// How long a development certificate is valid: a year, as browsers accept
/// for certificates at most 398 days long.
const CERT_VALIDITY_DAYS: i64 = 365;

/// A certificate for `names`, valid from a day ago (clocks differ) for
/// [`CERT_VALIDITY_DAYS`].
fn self_signed(names: &[String]) -> Result<rcgen::CertifiedKey<rcgen::KeyPair>, rcgen::Error> {
    let signing_key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CERT_VALIDITY_DAYS);
    let cert = params.self_signed(&signing_key)?;
    Ok(rcgen::CertifiedKey { cert, signing_key })
}

/// Writes a self-signed certificate for `names` (DNS names or IP addresses)
/// as `cert.pem` and `key.pem` (mode 0600) in `out`.
pub fn write_self_signed(names: &[String], out: &Path) -> Result<(), String> {
    let generated = self_signed(names).map_err(|e| format!("generating the certificate: {e}"))?;
    fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let cert_path = out.join("cert.pem");
    let key_path = out.join("key.pem");
    fs::write(&cert_path, generated.cert.pem())
        .map_err(|e| format!("writing {}: {e}", cert_path.display()))?;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(&key_path);
    let mut key = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(|e| format!("writing {}: {e}", key_path.display()))?;
    key.write_all(generated.signing_key.serialize_pem().as_bytes())
        .map_err(|e| format!("writing {}: {e}", key_path.display()))?;
    Ok(())
}
