//! Verification keys: each bound to exactly one algorithm when it is
//! configured, so a token's header can pick a key but never change what
//! kind of key it is (an RS256 public key is never an HS256 secret).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// HS256 secrets shorter than this are refused: RFC 7518 (3.2) asks for a
/// key as long as the hash, and a short one can be guessed offline from
/// any token.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// RSA keys shorter than this are refused (NIST has deprecated less since
/// 2013; 1024-bit moduli are within reach of a well-funded attacker).
pub const MIN_RSA_BITS: usize = 2048;

/// An HS256 secret, if long enough.
fn hmac_secret(secret: Vec<u8>) -> Result<Material, String> {
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(format!(
            "an HS256 secret must have at least {MIN_HMAC_SECRET_BYTES} bytes, this one has {}",
            secret.len()
        ));
    }
    Ok(Material::Hmac(secret))
}

/// An RS256 key, if large enough.
fn rsa_key(key: RsaPublicKey) -> Result<Material, String> {
    use rsa::traits::PublicKeyParts;
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!("an RS256 key must have at least {MIN_RSA_BITS} bits, this one has {bits}"));
    }
    Ok(Material::Rsa(key))
}

/// The signature algorithms the plugin accepts. `none` and every other
/// name are refused when the token is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC with SHA-256 over a shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl Alg {
    /// The algorithm a JOSE `alg` name denotes, if it is one we accept.
    pub fn from_name(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }
}

/// Key material; the variant fixes the algorithm.
enum Material {
    Hmac(Vec<u8>),
    Rsa(RsaPublicKey),
    Ec(p256::ecdsa::VerifyingKey),
}

/// One configured key.
pub struct Key {
    kid: Option<String>,
    material: Material,
}

impl Key {
    /// The key's id, if it has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self.material {
            Material::Hmac(_) => Alg::Hs256,
            Material::Rsa(_) => Alg::Rs256,
            Material::Ec(_) => Alg::Es256,
        }
    }

    /// Whether `signature` signs `signed` (the `header.payload` text) with
    /// this key. Callers have already checked the token's `alg` equals
    /// [`Key::alg`].
    pub fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Hmac(secret) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
                mac.update(signed);
                // Constant-time comparison.
                mac.verify_slice(signature).is_ok()
            }
            Material::Rsa(key) => {
                let hash = Sha256::digest(signed);
                key.verify(Pkcs1v15Sign::new::<Sha256>(), &hash, signature).is_ok()
            }
            Material::Ec(key) => {
                // JWS carries ECDSA signatures as the raw 64-byte `r || s`.
                let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else { return false };
                key.verify(signed, &sig).is_ok()
            }
        }
    }
}

/// Reads the `keys` list of the configuration. Each entry is a table with
/// `alg` and exactly one source: `secret` / `secret_base64` (HS256), `pem`
/// / `pem_file` (RS256, ES256), or a `jwks_file` (any, with their own
/// `kid` and `alg`), plus an optional `kid`.
pub fn from_config(entries: &[Value], read: &dyn Fn(&str) -> Result<String, String>) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = |e: String| format!("keys[{i}]: {e}");
        let Value::Object(table) = entry else { return Err(at("must be a table".into())) };
        for name in table.keys() {
            if !["alg", "kid", "secret", "secret_base64", "pem", "pem_file", "jwks_file"].contains(&name.as_str()) {
                return Err(at(format!("unknown key `{name}`")));
            }
        }
        let text = |name: &str| match table.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(at(format!("`{name}` must be a string"))),
        };
        let kid = text("kid")?.map(str::to_owned);
        if let Some(path) = text("jwks_file")? {
            if table.len() != 1 {
                return Err(at("`jwks_file` stands alone: the set names its own `kid` and `alg`".into()));
            }
            keys.extend(from_jwks(&read(path).map_err(at)?).map_err(at)?);
            continue;
        }
        let alg = text("alg")?.ok_or_else(|| at("`alg` is missing".into()))?;
        let alg = Alg::from_name(alg).ok_or_else(|| at(format!("unsupported alg `{alg}` (HS256, RS256, ES256)")))?;
        let sources = ["secret", "secret_base64", "pem", "pem_file"].iter().filter(|s| table.contains_key(**s)).count();
        if sources != 1 {
            return Err(at("give exactly one of `secret`, `secret_base64`, `pem`, `pem_file`".into()));
        }
        let material = match alg {
            Alg::Hs256 => {
                let secret = match (text("secret")?, text("secret_base64")?) {
                    (Some(s), _) => s.as_bytes().to_vec(),
                    (None, Some(b)) => STANDARD.decode(b).map_err(|e| at(format!("`secret_base64`: {e}")))?,
                    (None, None) => return Err(at("HS256 needs `secret` or `secret_base64`, not a PEM".into())),
                };
                hmac_secret(secret).map_err(at)?
            }
            Alg::Rs256 | Alg::Es256 => {
                let pem = match (text("pem")?, text("pem_file")?) {
                    (Some(p), _) => p.to_owned(),
                    (None, Some(path)) => read(path).map_err(at)?,
                    (None, None) => return Err(at("RS256 and ES256 need `pem` or `pem_file`".into())),
                };
                public_key(alg, &pem).map_err(at)?
            }
        };
        keys.push(Key { kid, material });
    }
    Ok(keys)
}

/// Parses a PEM public key for `alg` (SubjectPublicKeyInfo, or PKCS#1 for RSA).
fn public_key(alg: Alg, pem: &str) -> Result<Material, String> {
    match alg {
        Alg::Rs256 => RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|e| format!("not an RSA public key in PEM: {e}"))
            .and_then(rsa_key),
        Alg::Es256 => p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(Material::Ec)
            .map_err(|e| format!("not a P-256 public key in PEM: {e}")),
        Alg::Hs256 => Err("HS256 takes a secret, not a PEM".into()),
    }
}

/// The keys of a JSON Web Key Set (RFC 7517): RSA and P-256 keys, and
/// symmetric (`oct`) keys only when they say `"alg": "HS256"`. Keys for
/// other uses (`"use": "enc"`) or other algorithms are skipped; a weak
/// signing key (an `oct` key under [`MIN_HMAC_SECRET_BYTES`], an RSA key
/// under [`MIN_RSA_BITS`]) refuses the whole set, naming the key.
pub fn from_jwks(text: &str) -> Result<Vec<Key>, String> {
    let set: Value = serde_json::from_str(text).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let Some(Value::Array(entries)) = set.get("keys") else { return Err("JWKS has no `keys` list".into()) };
    let mut keys = Vec::new();
    for entry in entries {
        let field = |name: &str| entry.get(name).and_then(Value::as_str);
        if field("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let b64 = |name: &str| {
            let value = field(name).ok_or_else(|| format!("JWK lacks `{name}`"))?;
            URL_SAFE_NO_PAD.decode(value).map_err(|e| format!("JWK `{name}`: {e}"))
        };
        let alg = field("alg");
        let named = |e: String| format!("JWK `{}`: {e}", field("kid").unwrap_or("(no kid)"));
        let material = match (field("kty"), alg) {
            (Some("RSA"), None | Some("RS256")) => {
                let (n, e) = (BigUint::from_bytes_be(&b64("n")?), BigUint::from_bytes_be(&b64("e")?));
                let key = RsaPublicKey::new(n, e).map_err(|e| format!("JWK RSA key: {e}"))?;
                rsa_key(key).map_err(named)?
            }
            (Some("EC"), None | Some("ES256")) if field("crv") == Some("P-256") => {
                let (x, y) = (b64("x")?, b64("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("JWK P-256 coordinates must have 32 bytes".into());
                }
                let point =
                    p256::EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
                Material::Ec(
                    p256::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|e| format!("JWK EC key: {e}"))?,
                )
            }
            (Some("oct"), Some("HS256")) => hmac_secret(b64("k")?).map_err(named)?,
            _ => continue,
        };
        keys.push(Key { kid: field("kid").map(str::to_owned), material });
    }
    Ok(keys)
}
