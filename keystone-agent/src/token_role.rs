//! What the token a request presents may do: the admin token everything, the
//! read-only token (`admin.read_token_file`) only reads, so dashboards and CI
//! readers never hold the token that moves traffic.

use axum::http::Method;
use keystone_api::Actor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Reader,
}

impl Role {
    /// Who a change made with this token is recorded as in a deployment's history.
    /// The read-only token makes none (refused before any handler runs).
    pub fn actor(self) -> Actor {
        match self {
            Role::Admin => Actor::AdminToken,
            Role::Reader => Actor::Unknown,
        }
    }

    /// Why `method path` is refused to this role, or `None` when it is allowed.
    pub fn refusal(self, method: &Method, path: &str) -> Option<String> {
        let reads = method == Method::GET || method == Method::HEAD;
        (self == Role::Reader && !reads).then(|| {
            format!(
                "the read-only token may only read (GET); {method} {path} needs the admin token"
            )
        })
    }
}
