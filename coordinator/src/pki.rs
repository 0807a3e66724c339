//! Certificates the coordinator makes for itself: a CA that lives as long as the process, and
//! certificates it signs. The spawned workers' client certificates under mutual TLS
//! ([`crate::spawn::SpawnTls`]) and every worker's peer port identity when the job uses TLS
//! come from here; the CA's key never leaves memory.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

use crate::error::CoordError;

/// A CA made for this process only.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(<key in memory>)")
    }
}

fn err(what: &str) -> impl Fn(rcgen::Error) -> CoordError + '_ {
    move |e| CoordError::Spawn(format!("{what}: {e}"))
}

impl Ca {
    /// A fresh CA named `common_name`.
    pub(crate) fn new(common_name: &str) -> Result<Self, CoordError> {
        let e = err("making a certificate authority");
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(&e)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(&e)?).map_err(&e)?;
        Ok(Self { issuer })
    }

    /// The CA certificate (PEM).
    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` with `usages`, signed by this CA, and its key (both PEM).
    pub(crate) fn issue(
        &self,
        names: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), CoordError> {
        let e = err("issuing a certificate");
        let key = KeyPair::generate().map_err(&e)?;
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(&e)?;
        p.extended_key_usages = usages;
        let cert = p.signed_by(&key, &self.issuer).map_err(&e)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
