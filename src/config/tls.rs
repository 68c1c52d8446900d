//! Which certificate authorities the sidecar trusts, for private CAs in a scratch image.
//!
//! - `SSL_CERT_FILE` (a PEM bundle) and `SSL_CERT_DIR` (directories of PEM files) are honoured
//!   by the TLS stack itself: reqwest verifies with rustls-platform-verifier, which on Linux
//!   loads its roots with rustls-native-certs, and that reads these two variables *instead of*
//!   the system store. This applies to every connection: queue, token endpoint and endpoint.
//!   The image sets `SSL_CERT_FILE` to its bundled public roots; a private CA goes into a
//!   bundle that also holds the public roots, or into a directory named by `SSL_CERT_DIR`.
//! - `K_CA_CERTS` (Knative) is PEM text trusted for the endpoint only, in addition to the
//!   above; the configuration keeps it (`EndpointConfig::ca_certs`) for the endpoint's client
//!   (`transport`), so what was checked here is what is used.
//!
//! [`check`] checks all three at start, so a wrong path or a pasted non-certificate fails
//! with exit status 2 and the variable's name, not with an opaque TLS error on the first
//! request (or "no CA certificates were loaded" when the HTTP client is built).

use super::values::{ConfigError, Env};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;

/// Checks `SSL_CERT_FILE`, `SSL_CERT_DIR` and `K_CA_CERTS`; returns the `K_CA_CERTS` PEM.
pub(super) fn check(env: &Env) -> Result<Option<String>, ConfigError> {
    validate(&|name| env.get(name))
}

fn validate(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
    if let Some(path) = lookup("SSL_CERT_FILE") {
        let path = path.trim();
        let pem = std::fs::read(path).map_err(|e| {
            error(
                "SSL_CERT_FILE",
                format!("cannot read {path}: {e}; expected a PEM file of CA certificates"),
            )
        })?;
        usable_roots(&pem).map_err(|reason| error("SSL_CERT_FILE", format!("{path}: {reason}")))?;
    }
    if let Some(dirs) = lookup("SSL_CERT_DIR") {
        for dir in std::env::split_paths(dirs.trim()).filter(|d| !d.as_os_str().is_empty()) {
            if !Path::new(&dir).is_dir() {
                return Err(error(
                    "SSL_CERT_DIR",
                    format!(
                        "{} is not a directory; expected directories of PEM CA certificates, separated by ':'",
                        dir.display()
                    ),
                ));
            }
        }
    }
    let endpoint_pem = lookup("K_CA_CERTS");
    if let Some(pem) = &endpoint_pem {
        usable_roots(pem.as_bytes()).map_err(|reason| error("K_CA_CERTS", reason))?;
    }
    Ok(endpoint_pem)
}

fn error(variable: &'static str, expected: String) -> ConfigError {
    ConfigError { variable, expected }
}

/// How many certificates in `pem` rustls accepts as trust anchors; an error if none.
fn usable_roots(pem: &[u8]) -> Result<usize, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("expected PEM CA certificates, but the PEM is malformed ({e})"))?;
    let mut store = rustls::RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(
            "expected PEM CA certificates (-----BEGIN CERTIFICATE-----), found none usable"
                .to_string(),
        );
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A real CA certificate (ISRG Root X2, public), as any PEM bundle holds.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIICGzCCAaGgAwIBAgIQQdKd0XLq7qeAwSxs6S+HUjAKBggqhkjOPQQDAzBPMQsw
CQYDVQQGEwJVUzEpMCcGA1UEChMgSW50ZXJuZXQgU2VjdXJpdHkgUmVzZWFyY2gg
R3JvdXAxFTATBgNVBAMTDElTUkcgUm9vdCBYMjAeFw0yMDA5MDQwMDAwMDBaFw00
MDA5MTcxNjAwMDBaME8xCzAJBgNVBAYTAlVTMSkwJwYDVQQKEyBJbnRlcm5ldCBT
ZWN1cml0eSBSZXNlYXJjaCBHcm91cDEVMBMGA1UEAxMMSVNSRyBSb290IFgyMHYw
EAYHKoZIzj0CAQYFK4EEACIDYgAEzZvVn4CDCuwJSvMWSj5cz3es3mcFDR0HttwW
+1qLFNvicWDEukWVEYmO6gbf9yoWHKS5xcUy4APgHoIYOIvXRdgKam7mAHf7AlF9
ItgKbppbd9/w+kHsOdx1ymgHDB/qo0IwQDAOBgNVHQ8BAf8EBAMCAQYwDwYDVR0T
AQH/BAUwAwEB/zAdBgNVHQ4EFgQUfEKWrt5LSDv6kviejM9ti6lyN5UwCgYIKoZI
zj0EAwMDaAAwZQIwe3lORlCEwkSHRhtFcP9Ymd70/aTSVaYgLXTWNLxBo1BfASdW
tL4ndQavEi51mI38AjEAi/V3bNTIZargCyzuFJ0nN6T5U6VR5CmD1/iQMVtCnwr1
/q4AaOeMSQ+2b1tbFfLn
-----END CERTIFICATE-----
";

    fn check(vars: &[(&str, &str)]) -> Result<(), ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        validate(&move |name| map.get(name).cloned()).map(drop)
    }

    #[test]
    fn pem_bundles_are_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("trust-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("ca.pem");
        std::fs::write(&good, CA).expect("write");
        let bad = dir.join("not-a-ca.pem");
        std::fs::write(&bad, "hello").expect("write");
        let good_path = good.to_string_lossy().into_owned();
        let bad_path = bad.to_string_lossy().into_owned();
        let dir_path = dir.to_string_lossy().into_owned();

        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&[("SSL_CERT_FILE", &good_path)]), Ok(()));
        assert_eq!(check(&[("K_CA_CERTS", CA)]), Ok(()));
        assert_eq!(check(&[("SSL_CERT_DIR", &dir_path)]), Ok(()));
        let variable = |vars: &[(&str, &str)]| check(vars).expect_err("invalid").variable;
        assert_eq!(variable(&[("SSL_CERT_FILE", &bad_path)]), "SSL_CERT_FILE");
        assert_eq!(
            variable(&[("SSL_CERT_FILE", "/nonexistent.pem")]),
            "SSL_CERT_FILE"
        );
        assert_eq!(variable(&[("SSL_CERT_DIR", &good_path)]), "SSL_CERT_DIR");
        assert_eq!(
            variable(&[("K_CA_CERTS", "not a certificate")]),
            "K_CA_CERTS"
        );
        let broken = CA.replace("MIICGzCC", "MIICGz!!");
        assert_eq!(variable(&[("K_CA_CERTS", &broken)]), "K_CA_CERTS");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
