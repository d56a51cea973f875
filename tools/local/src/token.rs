//! Dev tokens: HS256 JWTs signed with a local-only key, verified by the local gateway, which puts
//! their claims into the request context exactly where API Gateway's JWT authorizer puts them.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const ISSUER: &str = "https://local.account-engagement.invalid";
pub const AUDIENCE: &str = "api://account-engagement-local";
const DEV_KEY: &[u8] = b"account-engagement-local-dev-signing-key";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    exp: i64,
    iat: i64,
    roles: Vec<String>,
}

/// A token for `role` (`admin` or `reader`) valid for `hours`.
pub fn issue(role: &str, hours: i64) -> Result<String, String> {
    let roles = match role {
        "admin" => vec!["Enrichment.Admin".to_string()],
        "reader" => vec!["Enrichment.Read".to_string()],
        "none" => vec![],
        other => return Err(format!("unknown role '{other}': use admin or reader")),
    };
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: format!("local-{role}"),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        exp: now + hours * 3600,
        iat: now,
        roles,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(DEV_KEY),
    )
    .map_err(|e| e.to_string())
}

/// The claims of a valid token, rendered as API Gateway renders them (arrays as `[a b]`).
pub fn verify(token: &str) -> Option<HashMap<String, String>> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(DEV_KEY), &validation)
            .ok()?;
    let c = data.claims;
    Some(HashMap::from([
        ("sub".to_string(), c.sub),
        ("iss".to_string(), c.iss),
        ("aud".to_string(), c.aud),
        ("exp".to_string(), c.exp.to_string()),
        ("iat".to_string(), c.iat.to_string()),
        ("roles".to_string(), format!("[{}]", c.roles.join(" "))),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_forged_ones_do_not() {
        let token = issue("reader", 1).expect("token");
        let claims = verify(&token).expect("valid");
        assert_eq!(claims["roles"], "[Enrichment.Read]");
        let mut forged = token.clone();
        forged.push('x');
        assert!(verify(&forged).is_none());
        assert!(issue("root", 1).is_err());
    }
}
