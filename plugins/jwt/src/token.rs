//! Reading and checking a compact JWS token: header, signature, then the
//! registered claims. Nothing in the payload is trusted before the
//! signature verified.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::keys::{Alg, Key};

/// Longest token the plugin reads; longer ones are refused before decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The claim checks the operator configured.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// Seconds of clock skew tolerated for `exp` and `nbf`.
    pub leeway_s: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// `aud` must be (or contain) this.
    pub audience: Option<String>,
    /// `iss` must equal this.
    pub issuer: Option<String>,
}

/// Whether `text` has the shape of a compact JWS (three base64url parts),
/// so a password that is not a token can be left to other plugins.
pub fn looks_like_jwt(text: &[u8]) -> bool {
    let mut parts = 0;
    for part in text.split(|b| *b == b'.') {
        parts += 1;
        if !part.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
            return false;
        }
    }
    parts == 3 && text.len() <= MAX_TOKEN_BYTES && text.starts_with(b"eyJ")
}

/// Verifies `token` with `keys` and checks its claims at `now_s` (seconds
/// since the Unix epoch). Returns the claims, or why the token is refused.
pub fn verify(token: &str, keys: &[Key], checks: &Checks, now_s: u64) -> Result<Map<String, Value>, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("token too long".into());
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS token".into());
    };
    let header = decode_json(header).map_err(|e| format!("header: {e}"))?;
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let Some(alg) = Alg::from_name(alg_name) else { return Err(format!("algorithm `{alg_name}` is not accepted")) };
    if header.get("crit").is_some() {
        return Err("critical header extensions are not supported".into());
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err("`kid` is not a string".into()),
    };
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "signature is not base64url".to_owned())?;
    let signed = &token.as_bytes()[..header_payload_len(token)];
    // A `kid` picks the keys with that id; without one, every key may be
    // tried. Either way only keys made for the header's algorithm.
    let mut candidates = keys.iter().filter(|k| k.alg() == alg && (kid.is_none() || k.kid() == kid)).peekable();
    if candidates.peek().is_none() {
        return Err(match kid {
            Some(kid) => format!("no {alg_name} key with kid `{kid}`"),
            None => format!("no {alg_name} key configured"),
        });
    }
    if !candidates.any(|k| k.verifies(signed, &signature)) {
        return Err("signature does not verify".into());
    }
    let claims = decode_json(payload).map_err(|e| format!("payload: {e}"))?;
    check_claims(&claims, checks, now_s)?;
    Ok(claims)
}

/// Length of `header.payload`, the signed part of a token.
fn header_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

fn decode_json(part: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| "not base64url".to_owned())?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// `exp`, `nbf`, `aud` and `iss` as configured.
fn check_claims(claims: &Map<String, Value>, checks: &Checks, now_s: u64) -> Result<(), String> {
    match numeric_date(claims, "exp")? {
        Some(exp) if now_s >= exp.saturating_add(checks.leeway_s) => return Err("token has expired".into()),
        None if checks.require_exp => return Err("token has no `exp`".into()),
        _ => {}
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now_s.saturating_add(checks.leeway_s) < nbf
    {
        return Err("token is not valid yet".into());
    }
    if let Some(want) = &checks.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == want,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(want.as_str())),
            _ => false,
        };
        if !ok {
            return Err("audience does not match".into());
        }
    }
    if let Some(want) = &checks.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(want.as_str())
    {
        return Err("issuer does not match".into());
    }
    Ok(())
}

/// A NumericDate claim in whole seconds (fractions are cut: RFC 7519
/// allows them).
pub fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match (v.as_u64(), v.as_f64()) {
            (Some(n), _) => Ok(Some(n)),
            (None, Some(f)) if f >= 0.0 && f.is_finite() => Ok(Some(f as u64)),
            _ => Err(format!("`{name}` is not a date")),
        },
    }
}
