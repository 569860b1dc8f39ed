//! Certificates made at test time (rcgen), written to a temporary directory for memcached
//! (`-Z -o ssl_chain_cert=…,ssl_key=…`) and for the client (`tls_ca_file`).
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A certificate authority of the test's own, and another that nobody trusts.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    stranger: CertifiedIssuer<'static, KeyPair>,
}

/// A server's certificate chain and key, as files.
pub struct ServerCert {
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl ServerCert {
    /// memcached's arguments for it.
    pub fn args(&self) -> Vec<String> {
        vec![
            "-Z".into(),
            "-o".into(),
            format!(
                "ssl_chain_cert={},ssl_key={}",
                self.chain.display(),
                self.key.display()
            ),
        ]
    }
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}

impl Pki {
    pub fn new() -> Self {
        static DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("distcache-pki-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let pki = Pki {
            dir,
            ca: authority("distcache test CA"),
            stranger: authority("a CA nobody trusts"),
        };
        std::fs::write(pki.ca_file(), pki.ca.pem()).expect("write the CA");
        pki
    }

    /// The CA's certificate, PEM.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names` (IP addresses or host names), signed by the test CA, or by the
    /// stranger; expired, or valid for years.
    pub fn server(
        &self,
        file: &str,
        names: &[&str],
        by_stranger: bool,
        expired: bool,
    ) -> ServerCert {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("a key");
        let issuer = if by_stranger {
            &self.stranger
        } else {
            &self.ca
        };
        let cert = params
            .signed_by(&key, issuer)
            .expect("a server certificate");
        let chain = self.dir.join(format!("{file}.pem"));
        let key_path = self.dir.join(format!("{file}.key"));
        std::fs::write(&chain, cert.pem()).expect("write the chain");
        write_secret(&key_path, &key.serialize_pem());
        ServerCert {
            chain,
            key: key_path,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Writes a file only its owner can read: a key, an authfile.
pub fn write_secret(path: &Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .expect("write a secret file");
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
