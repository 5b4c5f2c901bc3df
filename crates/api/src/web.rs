//! The web client, embedded in the binary: `/` and its two assets. Written against
//! `docs/protocol.md` and the REST API only; no build step.

use poem::Response;
use poem::http::header;

const INDEX: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/style.css");

fn asset(body: &'static str, content_type: &'static str) -> impl poem::Endpoint {
    poem::endpoint::make_sync(move |_| {
        Response::builder()
            .content_type(content_type)
            // Assets change with the binary; revalidating costs one request per page load.
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-content-type-options", "nosniff")
            .body(body)
    })
}

/// `/`: the page.
pub fn index() -> impl poem::Endpoint {
    asset(INDEX, "text/html; charset=utf-8")
}

/// `/app.js`: the client.
pub fn script() -> impl poem::Endpoint {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `/style.css`.
pub fn style() -> impl poem::Endpoint {
    asset(STYLE, "text/css; charset=utf-8")
}
