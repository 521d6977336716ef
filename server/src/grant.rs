//! Room tokens: an HMAC-SHA256-signed, expiring grant to join one room (optionally under one
//! name). Format: `v1.<base64url(JSON claims)>.<base64url(MAC)>`, the MAC over the claims part.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use protocol::{DisplayName, RoomName};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v1";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    room: String,
    /// Expiry, in seconds since the Unix epoch.
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

fn mac(secret: &str) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// Mints a token for `room`, valid for `ttl` from `now`.
pub fn mint(
    secret: &str,
    room: &RoomName,
    name: Option<&DisplayName>,
    ttl: Duration,
    now: SystemTime,
) -> String {
    let exp = now.duration_since(UNIX_EPOCH).unwrap_or_default().saturating_add(ttl).as_secs();
    let claims = Claims { room: room.to_string(), exp, name: name.map(|n| n.to_string()) };
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let mut mac = mac(secret);
    mac.update(claims.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{VERSION}.{claims}.{signature}")
}

/// Checks that `token` grants joining `room` (as `name`, when the token is bound to a name).
/// The error says what is wrong, for the `unauthorized` message.
pub fn verify(
    secret: &str,
    token: Option<&str>,
    room: &RoomName,
    name: Option<&DisplayName>,
    now: SystemTime,
) -> Result<(), String> {
    let token = token.ok_or("this server requires a room token (\"token\" in join)")?;
    let mut parts = token.split('.');
    let (Some(VERSION), Some(claims_part), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed room token".into());
    };
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "malformed room token")?;
    let mut mac = mac(secret);
    mac.update(claims_part.as_bytes());
    mac.verify_slice(&signature).map_err(|_| "room token signature is not valid")?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(claims_part)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or("malformed room token")?;
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if claims.exp <= now_secs {
        return Err("room token has expired".into());
    }
    if claims.room != room.as_str() {
        return Err(format!("room token is for another room, not {room}"));
    }
    if let Some(bound) = &claims.name
        && name.map(DisplayName::as_str) != Some(bound.as_str())
    {
        return Err("room token is bound to another name".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).expect("valid room")
    }

    #[test]
    fn a_minted_token_opens_its_room_only_until_it_expires() {
        let now = SystemTime::now();
        let token = mint("s3cret", &room("lobby"), None, Duration::from_secs(60), now);
        assert_eq!(verify("s3cret", Some(&token), &room("lobby"), None, now), Ok(()));
        assert!(verify("s3cret", Some(&token), &room("other"), None, now).is_err());
        assert!(verify("s3cret", Some(&token), &room("lobby"), None, now + Duration::from_secs(61)).is_err());
        assert!(verify("wrong", Some(&token), &room("lobby"), None, now).is_err());
        assert!(verify("s3cret", None, &room("lobby"), None, now).is_err());
    }

    #[test]
    fn a_forged_claim_fails_the_signature() {
        let now = SystemTime::now();
        let token = mint("s3cret", &room("lobby"), None, Duration::from_secs(60), now);
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"room":"vip","exp":99999999999}"#);
        let signature = token.rsplit('.').next().expect("three parts");
        let forged = format!("v1.{forged_claims}.{signature}");
        assert_eq!(
            verify("s3cret", Some(&forged), &room("vip"), None, now),
            Err("room token signature is not valid".into())
        );
        assert!(verify("s3cret", Some("garbage"), &room("lobby"), None, now).is_err());
    }

    #[test]
    fn a_name_bound_token_needs_that_name() {
        let now = SystemTime::now();
        let ana = DisplayName::parse("ana").expect("valid");
        let bob = DisplayName::parse("bob").expect("valid");
        let token = mint("k", &room("r"), Some(&ana), Duration::from_secs(60), now);
        assert_eq!(verify("k", Some(&token), &room("r"), Some(&ana), now), Ok(()));
        assert!(verify("k", Some(&token), &room("r"), Some(&bob), now).is_err());
        assert!(verify("k", Some(&token), &room("r"), None, now).is_err());
    }
}
