//! Transport security shared by both programs: the shared bearer token (checked on every
//! coordinator call when configured, in constant time), secret ids, and PEM loading with errors
//! that name the file.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
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

/// Shortest token a coordinator accepts.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Example or placeholder tokens that appear in documentation and manifests; a coordinator
/// refuses them.
pub const PLACEHOLDER_TOKENS: &[&str] = &[
    "change-me",
    "changeme",
    "change-me-please",
    "replace-me",
    "replace-with-a-secret",
    "secret",
    "token",
    "your-token-here",
    "REPLACE_ME",
];

impl Token {
    /// Checks that the token is fit to protect a job: at least [`MIN_TOKEN_BYTES`] long and not a
    /// placeholder. The error says how to make a good one.
    pub fn check_strength(&self) -> Result<(), String> {
        let how = "make one with `openssl rand -hex 32`";
        if PLACEHOLDER_TOKENS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&self.0))
        {
            return Err(format!(
                "the token is a placeholder from the documentation, not a secret; {how}"
            ));
        }
        if self.0.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "expected a token of at least {MIN_TOKEN_BYTES} bytes, got {}; {how}",
                self.0.len()
            ));
        }
        Ok(())
    }
}

/// A fresh secret identifier: 128 bits from the operating system's random source, in hex.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
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

/// Server side: refuses calls without the right `Bearer` token, compared in constant time.
#[derive(Clone)]
pub struct CheckToken {
    expected: Option<Vec<u8>>,
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
    pub fn new(token: Option<&Token>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {}", t.0).into_bytes()),
        }
    }
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        match req.metadata().get(AUTH_HEADER) {
            Some(given) if bool::from(given.as_bytes().ct_eq(expected)) => Ok(req),
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
    pub fn new(token: Option<&Token>) -> Self {
        Self {
            // a Token holds printable ASCII only (checked by `load_token`)
            value: token.and_then(|t| format!("Bearer {}", t.0).parse().ok()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Token {
        load_token(Some(s), None).unwrap().unwrap()
    }

    #[test]
    fn weak_tokens_are_refused_with_advice() {
        let e = token("short").check_strength().unwrap_err();
        assert!(
            e.contains("at least 16 bytes, got 5") && e.contains("openssl rand"),
            "{e}"
        );
        let e = token("change-me").check_strength().unwrap_err();
        assert!(e.contains("placeholder"), "{e}");
        token("0123456789abcdef").check_strength().unwrap();
        assert!(load_token(Some("has space"), None).is_err());
        assert_eq!(load_token(Some("  "), None).unwrap(), None);
    }

    #[test]
    fn the_token_check_accepts_only_the_exact_token() {
        use tonic::service::Interceptor;
        let t = token("0123456789abcdef-token");
        let mut check = CheckToken::new(Some(&t));
        let mut add = AddToken::new(Some(&t));
        let req = add.call(Request::new(())).unwrap();
        assert!(check.call(req).is_ok());
        for wrong in ["0123456789abcdef-tokeN", "0123456789abcdef-token2", "x"] {
            let req = AddToken::new(Some(&token(wrong)))
                .call(Request::new(()))
                .unwrap();
            let e = check.call(req).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{wrong}");
        }
        let e = check.call(Request::new(())).unwrap_err();
        assert!(e.message().contains("missing token"), "{}", e.message());
        assert_eq!(random_id().len(), 32);
        assert_ne!(random_id(), random_id());
    }
}
