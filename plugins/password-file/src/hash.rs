//! The password hash formats of a password file, each parsed once at load
//! and verified in constant time.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::{Argon2, Params};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Standard base64, padded or not: Mosquitto pads, other tools may not.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// More PBKDF2 iterations than this would take minutes in the sandbox and
/// only ever time out: refuse the entry at load instead.
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// Fewer PBKDF2 iterations than this make a `$7$` entry fast to crack
/// once the file is stolen (OWASP asks for 210,000 with SHA-512; Mosquitto
/// writes 101): such entries are reported at load.
pub const FAST_PBKDF2_ITERATIONS: u32 = 1000;

/// One user's stored password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    /// An Argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`),
    /// validated at load; its parameters travel with it.
    Argon2(String),
    /// Mosquitto 2.x `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// PBKDF2 iteration count.
        iterations: u32,
        /// Raw salt bytes.
        salt: Vec<u8>,
        /// Raw derived key.
        hash: Vec<u8>,
    },
    /// Mosquitto 1.x `$6$salt$hash`: SHA-512 over password then salt.
    Sha512 {
        /// Raw salt bytes.
        salt: Vec<u8>,
        /// Raw digest.
        hash: Vec<u8>,
    },
}

impl Hash {
    /// Parses the part of a line after `user:`.
    ///
    /// # Errors
    /// A message for the operator saying what is wrong with the entry.
    pub fn parse(text: &str) -> Result<Hash, String> {
        if text.is_empty() {
            return Err("no password hash (a user without a password is never accepted)".into());
        }
        if text.starts_with("$argon2") {
            let phc = PasswordHash::new(text).map_err(|e| format!("invalid argon2 hash: {e}"))?;
            argon2::Algorithm::try_from(phc.algorithm).map_err(|e| format!("invalid argon2 hash: {e}"))?;
            Params::try_from(&phc).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
            if phc.hash.is_none() || phc.salt.is_none() {
                return Err("invalid argon2 hash: salt or hash missing".into());
            }
            return Ok(Hash::Argon2(text.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("invalid PBKDF2 entry: expected $7$iterations$salt$hash".into());
            };
            let iterations: u32 =
                iterations.parse().map_err(|_| format!("invalid PBKDF2 iteration count {iterations:?}"))?;
            if iterations == 0 || iterations > MAX_PBKDF2_ITERATIONS {
                return Err(format!("PBKDF2 iteration count must be between 1 and {MAX_PBKDF2_ITERATIONS}"));
            }
            return Ok(Hash::Pbkdf2Sha512 { iterations, salt: decode("salt", salt)?, hash: decode("hash", hash)? });
        }
        if let Some(rest) = text.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("invalid SHA-512 entry: expected $6$salt$hash".into());
            };
            let hash = decode("hash", hash)?;
            if hash.len() != 64 {
                return Err(format!("invalid SHA-512 entry: the hash has {} bytes, not 64", hash.len()));
            }
            return Ok(Hash::Sha512 { salt: decode("salt", salt)?, hash });
        }
        Err("not a supported password hash (argon2id, Mosquitto $7$ or $6$); plain-text passwords are refused".into())
    }

    /// Whether this entry takes (nearly) a single hash pass to check, so a
    /// stolen file gives its password up quickly: every `$6$` entry (one
    /// salted SHA-512), and `$7$` entries under
    /// [`FAST_PBKDF2_ITERATIONS`].
    pub fn is_fast(&self) -> bool {
        match self {
            Hash::Argon2(_) => false,
            Hash::Pbkdf2Sha512 { iterations, .. } => *iterations < FAST_PBKDF2_ITERATIONS,
            Hash::Sha512 { .. } => true,
        }
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Argon2(phc) => match PasswordHash::new(phc) {
                Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
                Err(_) => false,
            },
            Hash::Pbkdf2Sha512 { iterations, salt, hash } => {
                let mut derived = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                bool::from(derived.ct_eq(hash))
            }
            Hash::Sha512 { salt, hash } => {
                let digest = Sha512::new().chain_update(password).chain_update(salt).finalize();
                bool::from(digest.as_slice().ct_eq(hash))
            }
        }
    }
}

fn decode(what: &str, text: &str) -> Result<Vec<u8>, String> {
    let bytes = B64.decode(text).map_err(|e| format!("the {what} is not base64: {e}"))?;
    if bytes.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `mosquitto_passwd -b f alice s3cret` (Mosquitto 2.0).
    const MOSQUITTO_7: &str = "$7$101$tZFQpalKf0haJHzc$CZG7RR8sWIqfoFgcHgSwDjvedtzGk75EZOpS0lOciKFUjsBkSW8xRZiYuLw8m7IP3Yp7HrS2kQ8BtHAfOOgCWg==";
    /// Written by `mosquitto_passwd -H sha512 -b f bob hunter2`.
    const MOSQUITTO_6: &str =
        "$6$01TbQGVw51L/KDt4$7ZqVmQxCsTWF00A7XzkYrsdad16Ko4PdvLspT/2wYBtGquVqivdyhuFlUqVUHn0RhmaAC3pX4OvnGfMqkIW0UQ==";
    /// argon2id of "correct horse" with small parameters (m=64 KiB, t=1).
    const ARGON2: &str =
        "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$bIKRw3Ua1pluirFy81fnppmR01EnUxY3hLEBwbWxBG8";

    #[test]
    fn mosquitto_pbkdf2_entries_verify() {
        let h = Hash::parse(MOSQUITTO_7).expect("valid $7$");
        assert!(matches!(h, Hash::Pbkdf2Sha512 { iterations: 101, .. }));
        assert!(h.verify(b"s3cret"));
        assert!(!h.verify(b"s3cret "));
        assert!(!h.verify(b""));
    }

    #[test]
    fn mosquitto_sha512_entries_verify() {
        let h = Hash::parse(MOSQUITTO_6).expect("valid $6$");
        assert!(h.verify(b"hunter2"));
        assert!(!h.verify(b"hunter3"));
    }

    #[test]
    fn argon2_entries_verify() {
        let h = Hash::parse(ARGON2).expect("valid argon2id");
        assert!(h.verify(b"correct horse"));
        assert!(!h.verify(b"correct horse battery"));
    }

    #[test]
    fn single_pass_entries_are_fast() {
        assert!(Hash::parse(MOSQUITTO_6).expect("valid").is_fast());
        assert!(Hash::parse(MOSQUITTO_7).expect("valid").is_fast(), "101 iterations");
        assert!(Hash::parse("$7$1$c2FsdA$aGFzaA").expect("valid").is_fast());
        assert!(!Hash::parse("$7$210000$c2FsdA$aGFzaA").expect("valid").is_fast());
        assert!(!Hash::parse(ARGON2).expect("valid").is_fast());
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "",
            "s3cret",
            "$7$",
            "$7$0$c2FsdA$aGFzaA",
            "$7$abc$c2FsdA$aGFzaA",
            "$7$101$c2FsdA",
            "$7$101$c2FsdA$aGFzaA$extra",
            "$7$101$!!!$aGFzaA",
            "$7$101$$aGFzaA",
            "$6$c2FsdA$aGFzaA",
            "$6$c2FsdA",
            "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ",
            "$argon2id$v=19$m=0,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$3bCeGdp4JJOXFmvqrjAtmFwA7B+B9T9XmD/1cvaiKuY",
            "$argon2x$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$3bCeGdp4JJOXFmvqrjAtmFwA7B+B9T9XmD/1cvaiKuY",
        ] {
            assert!(Hash::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
