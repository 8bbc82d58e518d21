//! NATS JWTs (version 2) for the decentralized auth model: operator, account and user claims,
//! signed with nkeys.
//!
//! A NATS JWT is `base64url(header) . base64url(claims) . base64url(ed25519 signature of the first
//! two parts)`, header `{"typ":"JWT","alg":"ed25519-nkey"}`, no padding. The claims carry `iss`
//! (the signer's public key), `sub` (the subject's public key), `iat`, `name`, a `jti` (the
//! base32 SHA-512/256 of the claims with an empty `jti`, as the Go library computes it) and a
//! `nats` object whose shape depends on the `type` (`operator`, `account`, `user`). This is the
//! "JWT library free" recipe of NATS ADR-14; only the fields ELK needs are produced.

use crate::AuthError;
use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512_256};

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Signs `nats` (the type-specific claims) about `subject` as `signer`.
pub(crate) fn encode(
    signer: &KeyPair,
    subject: &str,
    name: &str,
    expires: Option<u64>,
    nats: Value,
) -> Result<String, AuthError> {
    let mut claims = Map::new();
    claims.insert("jti".into(), json!(""));
    claims.insert("iat".into(), json!(now_unix()));
    claims.insert("iss".into(), json!(signer.public_key()));
    claims.insert("name".into(), json!(name));
    claims.insert("sub".into(), json!(subject));
    if let Some(expires) = expires {
        claims.insert("exp".into(), json!(expires));
    }
    claims.insert("nats".into(), nats);
    let unsigned = serde_json::to_vec(&claims).expect("claims are plain JSON");
    let jti = BASE32_NOPAD.encode(&Sha512_256::digest(&unsigned));
    claims.insert("jti".into(), json!(jti));
    let body = serde_json::to_vec(&claims).expect("claims are plain JSON");
    let signed_part = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(HEADER.as_bytes()),
        BASE64URL_NOPAD.encode(&body)
    );
    let signature = signer
        .sign(signed_part.as_bytes())
        .map_err(|error| AuthError::Key(format!("cannot sign a JWT: {error}")))?;
    Ok(format!(
        "{signed_part}.{}",
        BASE64URL_NOPAD.encode(&signature)
    ))
}

/// The claims of a JWT, **without verifying its signature** (for inspection: a server verifies).
pub fn claims(jwt: &str) -> Result<Value, AuthError> {
    let bad = |why: &str| AuthError::Jwt(format!("not a NATS JWT: {why}"));
    let mut parts = jwt.trim().split('.');
    let (Some(_header), Some(body), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected three dot-separated parts"));
    };
    let bytes = BASE64URL_NOPAD
        .decode(body.as_bytes())
        .map_err(|_| bad("the claims are not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| bad("the claims are not JSON"))
}

/// Checks the signature of `jwt` against the public key in its `iss` claim.
pub fn verify(jwt: &str) -> Result<Value, AuthError> {
    let claims = claims(jwt)?;
    let issuer = claims["iss"]
        .as_str()
        .ok_or_else(|| AuthError::Jwt("the JWT has no issuer".into()))?;
    let (signed_part, signature) = jwt
        .trim()
        .rsplit_once('.')
        .ok_or_else(|| AuthError::Jwt("the JWT has no signature".into()))?;
    let signature = BASE64URL_NOPAD
        .decode(signature.as_bytes())
        .map_err(|_| AuthError::Jwt("the signature is not base64url".into()))?;
    let key = KeyPair::from_public_key(issuer)
        .map_err(|error| AuthError::Jwt(format!("bad issuer key {issuer}: {error}")))?;
    key.verify(signed_part.as_bytes(), &signature)
        .map_err(|_| AuthError::Jwt(format!("the signature does not match issuer {issuer}")))?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_jwt_verifies_and_carries_its_claims() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = encode(
            &account,
            &user.public_key(),
            "worker-1",
            Some(4_000_000_000),
            json!({"type": "user", "version": 2}),
        )
        .unwrap();
        let claims = verify(&jwt).unwrap();
        assert_eq!(claims["name"], "worker-1");
        assert_eq!(claims["sub"], user.public_key());
        assert_eq!(claims["iss"], account.public_key());
        assert_eq!(claims["exp"], 4_000_000_000u64);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 52);
        // One changed byte in the claims breaks the signature.
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let mut body = BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap();
        let at = body.iter().position(|b| *b == b'w').unwrap();
        body[at] = b'x';
        parts[1] = BASE64URL_NOPAD.encode(&body);
        assert!(verify(&parts.join(".")).is_err());
        assert!(super::claims("garbage").is_err());
    }
}
