//! HTTP plumbing shared by the API functions: who the caller is (from the JWT claims API Gateway
//! verified), JSON bodies with field-named errors, and problem+json answers.

use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::{Serialize, de::DeserializeOwned};

use crate::problem::{FieldError, Problem};

pub const ADMIN_ROLE: &str = "Enrichment.Admin";
pub const READER_ROLE: &str = "Enrichment.Read";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The verified caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub roles: Vec<String>,
}

impl Caller {
    /// Reads the claims that API Gateway's JWT authorizer put into the request context.
    /// No claims means the request did not pass an authorizer: 401.
    pub fn from_request(request: &Request) -> Result<Caller, Problem> {
        let claims = match request.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(context)) => context
                .authorizer
                .as_ref()
                .and_then(|a| a.jwt.as_ref())
                .map(|jwt| jwt.claims.clone()),
            _ => None,
        }
        .filter(|claims| !claims.is_empty())
        .ok_or_else(Problem::unauthorized)?;
        let subject = claims
            .get("sub")
            .or_else(|| claims.get("oid"))
            .cloned()
            .unwrap_or_default();
        Ok(Caller {
            subject,
            roles: claims
                .get("roles")
                .map(|r| parse_roles(r))
                .unwrap_or_default(),
        })
    }

    pub fn authorize(&self, access: Access) -> Result<(), Problem> {
        let admin = self.roles.iter().any(|r| r == ADMIN_ROLE);
        let reader = self.roles.iter().any(|r| r == READER_ROLE);
        match access {
            Access::Write if admin => Ok(()),
            Access::Read if admin || reader => Ok(()),
            Access::Write if reader => Err(Problem::forbidden(format!(
                "the {READER_ROLE} role may only read; changes need {ADMIN_ROLE}"
            ))),
            _ => Err(Problem::forbidden(format!(
                "the token carries neither {ADMIN_ROLE} nor {READER_ROLE}"
            ))),
        }
    }
}

/// API Gateway renders a JSON array claim as `[a b]`; a plain string or JSON array is accepted too.
fn parse_roles(raw: &str) -> Vec<String> {
    if let Ok(list) = serde_json::from_str::<Vec<String>>(raw) {
        return list;
    }
    raw.trim_matches(|c| c == '[' || c == ']')
        .split(|c: char| c == ',' || c.is_whitespace())
        .map(|r| r.trim_matches('"'))
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

/// Checks who is calling, for handlers whose every route is protected.
pub fn authorize(request: &Request) -> Result<Caller, Problem> {
    let caller = Caller::from_request(request)?;
    let access = if request.method() == http::Method::GET {
        Access::Read
    } else {
        Access::Write
    };
    caller.authorize(access)?;
    Ok(caller)
}

/// The path split into segments, without a stage prefix API Gateway may add.
pub fn path_segments(request: &Request) -> Vec<String> {
    let path = request.raw_http_path();
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

pub fn query_param(request: &Request, name: &str) -> Option<String> {
    request
        .query_string_parameters_ref()
        .and_then(|q| q.first(name).map(str::to_string))
}

/// Parses a JSON body; a syntax or type error names the offending field.
pub fn json_body<T: DeserializeOwned>(request: &Request) -> Result<T, Problem> {
    let bytes: &[u8] = match request.body() {
        Body::Empty => b"",
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => b"",
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Problem::bad_request("the request needs a JSON body"));
    }
    if bytes.len() > 1_000_000 {
        return Err(Problem::new(
            413,
            "Payload too large",
            "the body may be at most 1 MB",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Problem::bad_request(format!("the body is not valid JSON: {inner}"))
        } else {
            let field = if path == "." {
                "body".to_string()
            } else {
                path
            };
            // serde reports a missing field at its parent; name the field itself.
            let message = inner.to_string();
            let field = match message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                Some(missing) if field == "body" => missing.to_string(),
                Some(missing) => format!("{field}.{missing}"),
                None => field,
            };
            Problem::validation(vec![FieldError::new(field, strip_position(&message))])
        }
    })
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

pub fn json_response<T: Serialize>(status: u16, value: &T) -> Response<Body> {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    build(status, "application/json", body)
}

pub fn problem_response(problem: &Problem) -> Response<Body> {
    if problem.status >= 500 {
        tracing::error!(status = problem.status, detail = %problem.detail, "request failed");
    }
    let body = serde_json::to_string(problem).unwrap_or_else(|_| "{}".into());
    build(problem.status, "application/problem+json", body)
}

pub fn html_response(status: u16, html: String) -> Response<Body> {
    build(status, "text/html; charset=utf-8", html)
}

pub fn empty_response(status: u16) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::NO_CONTENT);
    response
}

fn build(status: u16, content_type: &str, body: String) -> Response<Body> {
    let mut response = Response::new(Body::Text(body));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// Turns a handler outcome into the response API Gateway returns.
pub fn respond(result: Result<Response<Body>, Problem>) -> Response<Body> {
    result.unwrap_or_else(|problem| problem_response(&problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_in_every_rendering() {
        assert_eq!(
            parse_roles("[Enrichment.Admin Enrichment.Read]"),
            [ADMIN_ROLE, READER_ROLE]
        );
        assert_eq!(parse_roles("[\"Enrichment.Read\"]"), [READER_ROLE]);
        assert_eq!(parse_roles("Enrichment.Admin"), [ADMIN_ROLE]);
    }

    #[test]
    fn readers_cannot_write() {
        let reader = Caller {
            subject: "s".into(),
            roles: vec![READER_ROLE.into()],
        };
        assert!(reader.authorize(Access::Read).is_ok());
        assert_eq!(
            reader.authorize(Access::Write).map_err(|p| p.status),
            Err(403)
        );
        let nobody = Caller {
            subject: "s".into(),
            roles: vec![],
        };
        assert_eq!(
            nobody.authorize(Access::Read).map_err(|p| p.status),
            Err(403)
        );
    }
}
