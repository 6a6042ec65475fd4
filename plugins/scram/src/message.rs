//! The client's SCRAM messages (RFC 5802 section 7), parsed strictly.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Longest message accepted; real ones are about 100 bytes.
const MAX_MESSAGE: usize = 2048;

/// client-first-message.
#[derive(Debug)]
pub struct ClientFirst {
    /// `n,,` or `y,,` (with an optional `a=` authzid equal to the user).
    pub gs2_header: String,
    /// client-first-message-bare, as signed in the AuthMessage.
    pub bare: String,
    /// The user name, `=2C`/`=3D` decoded.
    pub user: String,
    /// The client's nonce.
    pub nonce: String,
}

impl ClientFirst {
    /// Parses a client-first message. Channel binding (`p=`) is refused:
    /// MQTT carries no TLS channel-binding data to the plugin.
    pub fn parse(text: &str) -> Result<ClientFirst, String> {
        if text.len() > MAX_MESSAGE {
            return Err("client-first too long".into());
        }
        let mut parts = text.splitn(3, ',');
        let (Some(cbind), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("not a client-first message".into());
        };
        if cbind != "n" && cbind != "y" {
            return Err("channel binding is not supported".into());
        }
        let mut fields = bare.split(',');
        if bare.starts_with("m=") {
            return Err("mandatory extensions are not supported".into());
        }
        let user = fields.next().and_then(|f| f.strip_prefix("n=")).ok_or("client-first lacks n=")?;
        let nonce = fields.next().and_then(|f| f.strip_prefix("r=")).ok_or("client-first lacks r=")?;
        let user = saslname(user)?;
        if !authzid.is_empty() && authzid.strip_prefix("a=").map(saslname).transpose()?.as_deref() != Some(&user) {
            return Err("an authorization identity other than the user is not supported".into());
        }
        if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
            return Err("invalid client nonce".into());
        }
        Ok(ClientFirst {
            gs2_header: format!("{cbind},{authzid},"),
            bare: bare.to_owned(),
            user,
            nonce: nonce.to_owned(),
        })
    }
}

/// Decodes a SCRAM saslname (`=2C` is `,`, `=3D` is `=`).
fn saslname(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err("invalid escape in the user name".into()),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err("empty user name".into());
    }
    Ok(out)
}

/// client-final-message.
#[derive(Debug)]
pub struct ClientFinal {
    /// The decoded `c=` attribute.
    pub channel_binding: Vec<u8>,
    /// The whole nonce the client echoes.
    pub nonce: String,
    /// client-final-message-without-proof, as signed in the AuthMessage.
    pub without_proof: String,
    /// The decoded ClientProof.
    pub proof: Vec<u8>,
}

impl ClientFinal {
    /// Parses a client-final message.
    pub fn parse(text: &str) -> Result<ClientFinal, String> {
        if text.len() > MAX_MESSAGE {
            return Err("client-final too long".into());
        }
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or("client-final lacks p=")?;
        let mut fields = without_proof.split(',');
        let cbind = fields.next().and_then(|f| f.strip_prefix("c=")).ok_or("client-final lacks c=")?;
        let nonce = fields.next().and_then(|f| f.strip_prefix("r=")).ok_or("client-final lacks r=")?;
        let decode = |v: &str, what: &str| STANDARD.decode(v).map_err(|_| format!("{what} is not base64"));
        Ok(ClientFinal {
            channel_binding: decode(cbind, "channel binding")?,
            nonce: nonce.to_owned(),
            without_proof: without_proof.to_owned(),
            proof: decode(proof, "proof")?,
        })
    }
}
