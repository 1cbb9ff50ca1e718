//! `GET /ui`: the status page, one static HTML file with its script inline (no build
//! step, nothing fetched from elsewhere). The page itself holds no data and is open;
//! its script reads `/tenants` and `/deployments` with the token the user gives it
//! (the admin or the read-only one), taken from the URL fragment or asked for and
//! kept in the tab's sessionStorage: never in a query string, so never in a log.

use axum::{http::header, response::IntoResponse};

const PAGE: &str = include_str!("status_page/page.html");

/// Only this page's own inline script and style, and requests back to the agent.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
