//! Transport security shared by both programs: the shared bearer token (checked on every
//! coordinator call when configured) and PEM loading with errors that name the file.

use std::path::{Path, PathBuf};

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// The metadata key that carries the token.
pub const AUTH_HEADER: &str = "authorization";

/// The shared token; its `Debug` output is redacted so configurations can be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Reads a token from `token` or else the first line of `token_file`; empty means none.
pub fn load_token(token: Option<&str>, token_file: Option<&Path>) -> Result<Option<Token>, String> {
    let raw = match (token, token_file) {
        (Some(t), _) => t.to_string(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .map_err(|e| format!("token file {}: {e}", p.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        (None, None) => return Ok(None),
    };
    let t = raw.trim().to_string();
    if t.is_empty() {
        return Ok(None);
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("token: expected printable ASCII without spaces".into());
    }
    Ok(Some(Token(t)))
}

/// Pairs `--tls-cert` with `--tls-key`: both or neither. A half pair is an error naming the
/// missing field and why it is expected.
pub fn cert_and_key(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>, (&'static str, String)> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err((
            "tls_key",
            "--tls-cert is given, so --tls-key is expected too, but it is missing".into(),
        )),
        (None, Some(_)) => Err((
            "tls_cert",
            "--tls-key is given, so --tls-cert is expected too, but it is missing".into(),
        )),
    }
}

/// Reads a PEM file; `what` names it in errors (e.g. `--tls-cert`).
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(format!(
            "{what} {}: expected a PEM file (-----BEGIN ...), got something else",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Server side: refuses calls without the right `Bearer` token.
#[derive(Clone)]
pub struct CheckToken {
    expected: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for CheckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckToken")
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl CheckToken {
    /// Checks `token` when given; lets everything through otherwise.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .expect("token is printable ASCII")
            }),
        }
    }
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        match req.metadata().get(AUTH_HEADER) {
            Some(given) if given == expected => Ok(req),
            Some(_) => Err(Status::unauthenticated(
                "wrong token (expected the job's shared token in `authorization: Bearer ...`)",
            )),
            None => Err(Status::unauthenticated(
                "missing token: this coordinator requires `authorization: Bearer <token>`",
            )),
        }
    }
}

/// Client side: attaches the token to every call.
#[derive(Clone)]
pub struct AddToken {
    value: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for AddToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddToken")
            .field("enabled", &self.value.is_some())
            .finish()
    }
}

impl AddToken {
    /// Attaches `token` when given.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            value: token.map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .expect("token is printable ASCII")
            }),
        }
    }
}

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.value {
            req.metadata_mut().insert(AUTH_HEADER, v.clone());
        }
        Ok(req)
    }
}
