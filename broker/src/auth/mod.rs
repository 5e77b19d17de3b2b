//! Tokens (spec §6, `docs/security.md` "Tokens"): JWTs verified with `jsonwebtoken`, and
//! the `Grant` a verified token gives a request or a WebSocket.
//!
//! Authentication is on when the configuration names a key: `auth_secret_file` (HS256)
//! or `auth_public_keys` (RS256/ES256, PEM or JWKS files). The algorithm is the
//! configured one (`auth_alg`) and no other: the token's header cannot choose it, so
//! `alg: none` and an HS256 token made with an RS256 public key as its secret are refused.
//!
//! Claims: `exp` (required, seconds since the Unix epoch), `nbf`, `aud` (checked against
//! `auth_audience`; without it, a token naming an audience is refused) and `iss` (checked
//! when configured), `sub` (a refresh must keep it), `publish` and `subscribe` (lists of namespace
//! patterns, `auth::pattern`), `admin` (a boolean: namespace administration and
//! `/metrics`). A token whose claims have another shape is refused as a whole.
//!
//! Where each is checked: `http::auth` for every HTTP route and the WebSocket upgrade,
//! the WebSocket session for each `open` and `publish` and for `{"t":"auth"}` refreshes.

mod keys;
mod pattern;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Validation};
use rewind_protocol::ErrorCode;
use serde::Deserialize;

use crate::config::{seconds, Config};
use pattern::{any_matches, Pattern};

/// Why authentication could not be set up, or a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The configuration's keys cannot be used (a file missing, not a key, a secret too
    /// short, options that contradict each other). The broker does not start.
    #[error("authentication: {0}")]
    Config(String),
    /// A token is missing, malformed, badly signed, expired or otherwise not taken:
    /// `401 unauthorized`, or `error` `unauthorized` on a WebSocket.
    #[error("{0}")]
    Token(String),
}

/// A refused request: `forbidden` (a good token that does not allow it) or
/// `unauthorized`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

/// The verifier: keys and rules, from the configuration.
pub struct Auth {
    keys: Vec<keys::Key>,
    validation: Validation,
    leeway: Duration,
    warning: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("keys", &self.keys.len())
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

/// The claims rewind reads; the others are ignored. `nbf` and `iat` are read only for
/// their type: jsonwebtoken 9 skips its `nbf` check when `nbf` is not a number
/// (CVE-2026-25537, fixed in 10.3.0), so a token whose `nbf` or `iat` is not a
/// NumericDate fails here, as a whole.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default, rename = "nbf")]
    _nbf: Option<u64>,
    #[serde(default, rename = "iat")]
    _iat: Option<u64>,
    /// Read for its type too: jsonwebtoken checks an `aud` only when it is a string or a
    /// list of strings.
    #[serde(default, rename = "aud")]
    _aud: Option<Audience>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// The shapes of `aud` (RFC 7519 §4.1.3): one string, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(#[allow(dead_code)] String),
    Many(#[allow(dead_code)] Vec<String>),
}

/// What a verified token allows.
#[derive(Debug)]
struct Granted {
    sub: Option<String>,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    admin: bool,
    /// `exp` plus the leeway: when the token stops being taken.
    expires: SystemTime,
}

impl Auth {
    /// The verifier `config` asks for; `Ok(None)` when it names no key (authentication
    /// off). Reads the key files.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Auth>>, AuthError> {
        let Some(keys) = keys::load(config)? else {
            return Ok(None);
        };
        let mut validation = Validation::new(keys::algorithm(config.auth_alg));
        validation.leeway = config.auth_leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        // Without `auth_audience`, jsonwebtoken's default stands: a token that names an
        // audience was meant for some service, so it is refused rather than taken here.
        if let Some(aud) = &config.auth_audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &config.auth_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Arc::new(Auth {
            keys,
            validation,
            leeway: seconds(config.auth_leeway_secs),
            warning: seconds(config.auth_expiry_warning_secs),
        })))
    }

    /// Verifies `token`: its signature with the configured algorithm and key (the key of
    /// its `kid` when it names one), its `exp`, `nbf`, `aud` and `iss`, and the shape of
    /// rewind's claims.
    pub(crate) fn verify(self: &Arc<Self>, token: &str) -> Result<Grant, AuthError> {
        let refused = |why: &str| AuthError::Token(format!("token refused: {why}"));
        let header = decode_header(token).map_err(|e| refused(&describe(e.kind())))?;
        if has_crit(token) {
            return Err(refused(
                "its header lists critical extensions (crit), and this broker understands none",
            ));
        }
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(refused(&format!(
                "signed with {:?}; this broker takes {:?} only",
                header.alg, self.validation.algorithms[0]
            )));
        }
        let candidates = self
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid);
        let mut last = refused("no key of this broker has the token's kid");
        for key in candidates {
            match decode::<Claims>(token, &key.key, &self.validation) {
                Ok(data) => return self.grant(data.claims),
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {
                    last = refused(&describe(e.kind()));
                }
                Err(e) => return Err(refused(&describe(e.kind()))),
            }
        }
        Err(last)
    }

    fn grant(self: &Arc<Self>, claims: Claims) -> Result<Grant, AuthError> {
        let patterns = |list: &[String]| -> Result<Vec<Pattern>, AuthError> {
            list.iter()
                .map(|p| {
                    Pattern::parse(p).map_err(|e| AuthError::Token(format!("token refused: {e}")))
                })
                .collect()
        };
        // `exp` is required by the validation, so it is there.
        let exp = claims.exp.unwrap_or_default();
        let expires = UNIX_EPOCH + Duration::from_secs(exp).min(seconds(u64::MAX)) + self.leeway;
        Ok(Grant {
            auth: Some(Arc::clone(self)),
            granted: Some(Arc::new(Granted {
                sub: claims.sub,
                publish: patterns(&claims.publish)?,
                subscribe: patterns(&claims.subscribe)?,
                admin: claims.admin,
                expires,
            })),
        })
    }
}

/// Whether the JOSE header of `token` (already read by `decode_header`) has a `crit`
/// member. RFC 7515 §4.1.11: a token naming critical extensions the recipient does not
/// understand is refused, and rewind understands none, so any `crit` is refused.
fn has_crit(token: &str) -> bool {
    use base64::Engine;
    let Some(part) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()
        .and_then(|bytes| {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
        })
        .is_some_and(|header| header.contains_key("crit"))
}

/// A sentence for a refused token, without echoing it.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidToken => "not a JWT (three base64url parts)".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the algorithm is not the configured one".into()
        }
        ErrorKind::MissingRequiredClaim(c) => format!("the {c} claim is missing"),
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
        ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
        ErrorKind::Json(e) => format!("bad header or claims ({e})"),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => "not base64url JSON".into(),
        other => format!("{other:?}"),
    }
}

/// The `sub` of the token a request was answered under, put on its response for the
/// request log line (never the token itself).
#[derive(Debug, Clone)]
pub(crate) struct Subject(pub String);

/// What a request or a WebSocket may do: everything when authentication is off, else
/// what its token's claims allow, until the token expires. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grant {
    auth: Option<Arc<Auth>>,
    granted: Option<Arc<Granted>>,
}

fn forbidden(message: String) -> Result<(), Refusal> {
    Err(Refusal {
        code: ErrorCode::Forbidden,
        message,
    })
}

impl Grant {
    /// Everything allowed, for ever: authentication is off.
    pub(crate) fn open() -> Grant {
        Grant::default()
    }

    /// Whether a publish to `ns` is allowed (a `publish` pattern matches).
    pub(crate) fn may_publish(&self, ns: &str) -> Result<(), Refusal> {
        match &self.granted {
            Some(g) if !any_matches(&g.publish, ns) => {
                forbidden(format!("the token does not allow publishing to {ns}"))
            }
            _ => Ok(()),
        }
    }

    /// Whether reading or subscribing to `ns` is allowed (a `subscribe` pattern matches).
    pub(crate) fn may_subscribe(&self, ns: &str) -> Result<(), Refusal> {
        match &self.granted {
            Some(g) if !any_matches(&g.subscribe, ns) => {
                forbidden(format!("the token does not allow subscribing to {ns}"))
            }
            _ => Ok(()),
        }
    }

    /// Whether `ns` may be listed and described: either pattern matches, or `admin`.
    pub(crate) fn may_see(&self, ns: &str) -> bool {
        match &self.granted {
            Some(g) => g.admin || any_matches(&g.subscribe, ns) || any_matches(&g.publish, ns),
            None => true,
        }
    }

    /// Whether namespace administration and `/metrics` are allowed (`admin: true`).
    pub(crate) fn may_admin(&self) -> Result<(), Refusal> {
        match &self.granted {
            Some(g) if !g.admin => forbidden("this needs a token with admin: true".into()),
            _ => Ok(()),
        }
    }

    /// The token's subject, for the log.
    pub(crate) fn subject(&self) -> Option<&str> {
        self.granted.as_ref().and_then(|g| g.sub.as_deref())
    }

    /// How long until the token stops being taken (`exp` plus the leeway); `None` when
    /// authentication is off.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        let g = self.granted.as_ref()?;
        Some(
            g.expires
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }

    /// How long before expiry a WebSocket is warned (`auth_expiry_warning_secs`).
    pub(crate) fn warning(&self) -> Duration {
        self.auth.as_ref().map_or(Duration::ZERO, |a| a.warning)
    }

    /// The grant of `token`, sent to refresh this one in place: verified as any token,
    /// and with the same `sub` as this one's (a connection does not change hands).
    pub(crate) fn refreshed(&self, token: &str) -> Result<Grant, AuthError> {
        let Some(auth) = &self.auth else {
            return Err(AuthError::Token(
                "authentication is off on this broker; there is no token to refresh".into(),
            ));
        };
        let next = auth.verify(token)?;
        if next.subject() != self.subject() {
            return Err(AuthError::Token(
                "token refused: a refresh must have the same sub as the connection's token".into(),
            ));
        }
        Ok(next)
    }
}
