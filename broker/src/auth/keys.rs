//! Reading the verification keys the configuration names, once, at start.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthError;
use crate::config::{AuthAlg, Config};

/// The least HS256 secret, in bytes: RFC 7518 §3.2 wants a key at least as long as the
/// hash (256 bits).
const LEAST_SECRET_BYTES: usize = 32;

/// One verification key, with the `kid` a JWKS gave it.
pub(super) struct Key {
    pub kid: Option<String>,
    pub key: DecodingKey,
}

/// `alg`'s name in a JWT header (RFC 7518 §3.1).
pub(super) fn name(alg: AuthAlg) -> &'static str {
    match alg {
        AuthAlg::Hs256 => "HS256",
        AuthAlg::Rs256 => "RS256",
        AuthAlg::Es256 => "ES256",
    }
}

/// `alg` as jsonwebtoken names it.
pub(super) fn algorithm(alg: AuthAlg) -> Algorithm {
    match alg {
        AuthAlg::Hs256 => Algorithm::HS256,
        AuthAlg::Rs256 => Algorithm::RS256,
        AuthAlg::Es256 => Algorithm::ES256,
    }
}

/// The keys `config` names: the secret for HS256, the public keys for RS256/ES256;
/// `Ok(None)` when it names none and sets no other token option (authentication off). A
/// token option (`auth_alg`, `auth_audience`, `auth_issuer`, `auth_leeway_secs`,
/// `auth_expiry_warning_secs`) set without a key is refused: the broker would start open. A secret with RS256/ES256, public
/// keys with HS256, or both, are refused: which one would be meant cannot be told.
pub(super) fn load(config: &Config) -> Result<Option<Vec<Key>>, AuthError> {
    let secret = config.auth_secret_file.as_deref();
    let public = &config.auth_public_keys;
    match (config.auth_alg, secret, public.is_empty()) {
        (_, None, true) => match partial(config) {
            Some(option) => Err(AuthError::Config(format!(
                "{option} is set but no key is (auth_secret_file or auth_public_keys): \
                 the broker would start without checking tokens; set a key or remove {option}"
            ))),
            None => Ok(None),
        },
        (_, Some(_), false) => Err(AuthError::Config(
            "auth_secret_file and auth_public_keys are both set; set one".into(),
        )),
        (AuthAlg::Hs256, Some(path), true) => Ok(Some(vec![secret_key(path)?])),
        (AuthAlg::Hs256, None, false) => Err(AuthError::Config(
            "auth_public_keys needs auth_alg RS256 or ES256 (HS256 takes auth_secret_file)".into(),
        )),
        (alg, Some(_), true) => Err(AuthError::Config(format!(
            "auth_alg {} needs auth_public_keys (auth_secret_file is for HS256)",
            name(alg)
        ))),
        (alg, None, false) => {
            let mut keys = Vec::new();
            for path in public {
                keys.extend(public_keys(path, alg)?);
            }
            if keys.is_empty() {
                return Err(AuthError::Config(format!(
                    "auth_public_keys holds no {} key",
                    name(alg)
                )));
            }
            Ok(Some(keys))
        }
    }
}

/// The first token option `config` sets away from its default, when it names no key: a
/// configuration that means tokens to be checked, but would start open.
fn partial(config: &Config) -> Option<&'static str> {
    let default = Config::default();
    [
        ("auth_alg", config.auth_alg != default.auth_alg),
        ("auth_audience", config.auth_audience.is_some()),
        ("auth_issuer", config.auth_issuer.is_some()),
        (
            "auth_leeway_secs",
            config.auth_leeway_secs != default.auth_leeway_secs,
        ),
        (
            "auth_expiry_warning_secs",
            config.auth_expiry_warning_secs != default.auth_expiry_warning_secs,
        ),
    ]
    .into_iter()
    .find_map(|(name, set)| set.then_some(name))
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::Config(format!("reading {}: {e}", path.display())))
}

fn secret_key(path: &Path) -> Result<Key, AuthError> {
    let mut secret = read(path)?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    if secret.len() < LEAST_SECRET_BYTES {
        return Err(AuthError::Config(format!(
            "the secret in {} is {} bytes; HS256 needs at least {LEAST_SECRET_BYTES} (RFC 7518 §3.2)",
            path.display(),
            secret.len()
        )));
    }
    Ok(Key {
        kid: None,
        key: DecodingKey::from_secret(&secret),
    })
}

/// The keys of one file: a JWKS when it is JSON (its keys of `alg`'s family, and of
/// `alg` where the key says), else one PEM public key.
fn public_keys(path: &Path, alg: AuthAlg) -> Result<Vec<Key>, AuthError> {
    let bytes = read(path)?;
    let bad = |what: String| AuthError::Config(format!("{}: {what}", path.display()));
    if bytes.trim_ascii_start().starts_with(b"{") {
        let set: JwkSet =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a JWKS: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let fits = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => alg == AuthAlg::Rs256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => alg == AuthAlg::Es256,
                _ => false,
            };
            let named = jwk.common.key_algorithm.map(|a| a.to_string());
            if !fits || named.is_some_and(|a| a != name(alg)) {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("a key: {e}")))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                key,
            });
        }
        return Ok(keys);
    }
    let key = match alg {
        AuthAlg::Rs256 => DecodingKey::from_rsa_pem(&bytes),
        AuthAlg::Es256 => DecodingKey::from_ec_pem(&bytes),
        AuthAlg::Hs256 => return Err(bad("HS256 takes no public key".into())),
    }
    .map_err(|e| bad(format!("not a PEM {} public key: {e}", name(alg))))?;
    Ok(vec![Key { kid: None, key }])
}
