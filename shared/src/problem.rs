//! Errors of the HTTP API as RFC 9457 problem details (`application/problem+json`).

use serde::Serialize;

/// One invalid field of a request: the JSON path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A problem the API answers with. Everything a handler can fail with ends up as one of these,
/// so a client never sees a bare 500 for bad input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: u16, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: title.into(),
            status,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        Self {
            errors,
            ..Self::new(422, "Invalid request", detail)
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, "Bad request", detail)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "Unauthorized",
            "a valid bearer token is required for this route",
        )
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "Not found", detail)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(409, "Conflict", detail)
    }
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(412, "Precondition failed", detail)
    }
    pub fn precondition_required(detail: impl Into<String>) -> Self {
        Self::new(428, "Precondition required", detail)
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, "Internal error", detail)
    }
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(503, "Service unavailable", detail)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)
    }
}

impl std::error::Error for Problem {}
