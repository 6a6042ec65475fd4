//! MQTT 5 enhanced authentication with SCRAM-SHA-256 (RFC 5802, RFC 7677);
//! see README.md.
//!
//! The exchange takes two plugin calls: client-first (CONNECT, or AUTH
//! 0x19 for re-authentication) answers `continue(server-first)`, and
//! client-final (AUTH 0x18) answers `allow` with the server-final message
//! as the grant's Authentication Data. The broker pins one instance to an
//! exchange, so the conversation between the two calls lives in `self`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use moat_plugin_sdk::*;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub mod credentials;
pub mod message;

use credentials::{Entry, Store};

/// The Authentication Method this plugin answers.
pub const METHOD: &str = "SCRAM-SHA-256";

/// Bytes of randomness in the server's nonce part.
const NONCE_BYTES: usize = 18;

/// A conversation between client-first and client-final.
struct Pending {
    client_id: String,
    peer: String,
    user: String,
    /// The whole nonce, client's part then ours.
    nonce: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// `None` for an unknown user: the exchange runs to the end and fails.
    entry: Option<Entry>,
}

/// The credential store and the conversation in progress on this instance.
pub struct Scram {
    store: Store,
    pending: Option<Pending>,
}

impl Plugin for Scram {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        let store = Store::from_config(&config, &read_file)?;
        Ok((Scram { store, pending: None }, Manifest::new().authenticate()))
    }

    fn authenticate(&mut self, client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        // v3.1.1 clients and other methods are someone else's business.
        if credentials.auth_method.as_deref() != Some(METHOD) {
            return AuthOutcome::Ignore;
        }
        let data = credentials.auth_data.as_deref().unwrap_or_default();
        let Ok(text) = std::str::from_utf8(data) else { return deny(&mut self.pending, "message is not UTF-8") };
        let result = if text.starts_with("c=") {
            match self.pending.take() {
                Some(pending) => self.client_final(client, pending, text),
                None => Err("client-final without a client-first".to_owned()),
            }
        } else {
            self.client_first(client, credentials, text)
        };
        match result {
            Ok(outcome) => outcome,
            Err(reason) => deny(&mut self.pending, &reason),
        }
    }
}

/// A denial that also forgets the conversation.
fn deny(pending: &mut Option<Pending>, reason: &str) -> AuthOutcome {
    *pending = None;
    AuthOutcome::Deny(format!("SCRAM: {reason}"))
}

impl Scram {
    /// Answers a client-first message with the server-first message.
    fn client_first(
        &mut self,
        client: &ClientInfo,
        credentials: &Credentials,
        text: &str,
    ) -> Result<AuthOutcome, String> {
        let first = message::ClientFirst::parse(text)?;
        if let Some(given) = credentials.username.as_deref().filter(|u| !u.is_empty())
            && given != first.user
        {
            return Err("the SCRAM user differs from the user name".into());
        }
        let mut random = [0u8; NONCE_BYTES];
        getrandom::fill(&mut random).map_err(|e| format!("no randomness: {e}"))?;
        let nonce = format!("{}{}", first.nonce, STANDARD.encode(random));
        let entry = self.store.get(&first.user).cloned();
        let (salt, iterations) = match &entry {
            Some(e) => (e.salt.clone(), e.iterations),
            None => self.store.fake_salt(&first.user),
        };
        let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(&salt));
        self.pending = Some(Pending {
            client_id: client.client_id.clone(),
            peer: client.peer_address.clone(),
            user: first.user,
            nonce,
            gs2_header: first.gs2_header,
            client_first_bare: first.bare,
            server_first: server_first.clone(),
            entry,
        });
        Ok(AuthOutcome::Continue(server_first.into_bytes()))
    }

    /// Checks the client's proof; allows with the server-final message.
    fn client_final(&mut self, client: &ClientInfo, pending: Pending, text: &str) -> Result<AuthOutcome, String> {
        if pending.client_id != client.client_id || pending.peer != client.peer_address {
            return Err("client-final from another connection".into());
        }
        let last = message::ClientFinal::parse(text)?;
        if last.channel_binding != pending.gs2_header.as_bytes() {
            return Err("channel binding does not match the GS2 header".into());
        }
        if last.nonce != pending.nonce {
            return Err("nonce does not match this exchange".into());
        }
        let auth_message = format!("{},{},{}", pending.client_first_bare, pending.server_first, last.without_proof);
        let Some(entry) = &pending.entry else { return Err(format!("unknown user {}", pending.user)) };
        let signature = hmac(&entry.stored_key, auth_message.as_bytes());
        if last.proof.len() != signature.len() {
            return Err("proof has the wrong length".into());
        }
        let client_key: Vec<u8> = last.proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let stored_key = Sha256::digest(&client_key);
        if !bool::from(stored_key.as_slice().ct_eq(&entry.stored_key)) {
            return Err(format!("wrong proof for {}", pending.user));
        }
        let server_final = format!("v={}", STANDARD.encode(hmac(&entry.server_key, auth_message.as_bytes())));
        let grant = Grant { attributes: Vec::new(), username_override: Some(pending.user) };
        Ok(AuthOutcome::Allow(grant.with_auth_data(server_final.as_bytes())))
    }
}

/// HMAC-SHA-256.
pub fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

export_plugin!(Scram);

#[cfg(test)]
mod tests;
