//! TURN credentials in the TURN REST convention (draft-uberti-behave-turn-rest), the one coturn
//! checks with `use-auth-secret` + `static-auth-secret`: username `<unix expiry>:<member id>`,
//! password base64(HMAC-SHA1(secret, username)). The server and the TURN server share only the
//! secret; nothing is stored, and a credential stops working at its expiry on its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use protocol::IceServer;
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// The TURN servers handed to every member, and how their credentials are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnConfig {
    /// Every `--turn-url`, in one `RTCIceServer` entry (they share the credential).
    pub urls: Vec<String>,
    /// Shared with the TURN server (coturn's `static-auth-secret`).
    pub secret: String,
    /// How long a credential works. coturn re-checks it on every allocation refresh, so it must
    /// outlive a call.
    pub ttl: Duration,
}

impl TurnConfig {
    /// The `ice_servers` entry for `member`, valid for `ttl` from `now`. A pure function of its
    /// inputs, so the same member gets a fresh credential in each `welcome`.
    pub fn credential(&self, member: &str, now: SystemTime) -> IceServer {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let expiry = since_epoch.saturating_add(self.ttl).as_secs();
        let username = format!("{expiry}:{member}");
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha1::new_from_slice(self.secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(username.as_bytes());
        let credential = STANDARD.encode(mac.finalize().into_bytes());
        IceServer { urls: self.urls.clone(), username: Some(username), credential: Some(credential) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ttl: Duration) -> TurnConfig {
        TurnConfig {
            urls: vec![
                "turn:198.18.0.1:3478?transport=udp".into(),
                "turn:198.18.0.1:3478?transport=tcp".into(),
            ],
            secret: "north-secret".into(),
            ttl,
        }
    }

    #[test]
    fn matches_a_vector_computed_with_openssl() {
        // printf '%s' '1700003600:p-abc' | openssl dgst -sha1 -hmac 'north-secret' -binary | base64
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let entry = config(Duration::from_secs(3600)).credential("p-abc", now);
        assert_eq!(entry.username.as_deref(), Some("1700003600:p-abc"));
        assert_eq!(entry.credential.as_deref(), Some("NNbvm/CKic8tfSGlFudkrA8apz4="));
        assert_eq!(entry.urls.len(), 2, "every --turn-url in the one entry");
    }

    #[test]
    fn expiry_follows_the_clock_and_the_ttl() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_900);
        let short = config(Duration::from_secs(1)).credential("p", now);
        let later = config(Duration::from_secs(1)).credential("p", now + Duration::from_secs(10));
        assert_eq!(short.username.as_deref(), Some("1700000001:p"));
        assert_eq!(later.username.as_deref(), Some("1700000011:p"));
        assert_ne!(short.credential, later.credential, "a fresh credential, not a reused one");
    }

    #[test]
    fn another_secret_gives_another_credential() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ours = config(Duration::from_secs(60)).credential("p", now);
        let theirs =
            TurnConfig { secret: "other".into(), ..config(Duration::from_secs(60)) }.credential("p", now);
        assert_eq!(ours.username, theirs.username);
        assert_ne!(ours.credential, theirs.credential);
    }
}
