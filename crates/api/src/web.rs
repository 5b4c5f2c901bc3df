//! The web client, embedded in the binary: `/`, its two assets, its icon and its service worker. Written against
//! `docs/protocol.md` and the REST API only; no build step.

use poem::Response;
use poem::http::header;

const INDEX: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/style.css");
const WORKER: &str = include_str!("../web/sw.js");
const ICON: &str = include_str!("../web/favicon.svg");

fn asset(
    body: impl Into<poem::Body> + Clone + Send + Sync + 'static,
    content_type: &'static str,
) -> impl poem::Endpoint {
    poem::endpoint::make_sync(move |_| {
        Response::builder()
            .content_type(content_type)
            // Assets change with the binary; revalidating costs one request per page load.
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-content-type-options", "nosniff")
            .body(body.clone())
    })
}

/// The page says whether demo sign-in is on in this tag, so that it asks the demo endpoints
/// nothing when it is off.
const DEMO_OFF: &str = r#"<meta name="ringline-demo" content="off">"#;

/// `/`: the page; `demo`: whether demo sign-in (`ringline demo`) is on.
pub fn index(demo: bool) -> impl poem::Endpoint {
    let page =
        if demo { INDEX.replace(DEMO_OFF, r#"<meta name="ringline-demo" content="on">"#) } else { INDEX.to_owned() };
    asset(page, "text/html; charset=utf-8")
}

/// `/app.js`: the client.
pub fn script() -> impl poem::Endpoint {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `/sw.js`: the service worker that rings the browser with no tab open (scope `/`).
pub fn service_worker() -> impl poem::Endpoint {
    asset(WORKER, "text/javascript; charset=utf-8")
}

/// `/style.css`.
pub fn style() -> impl poem::Endpoint {
    asset(STYLE, "text/css; charset=utf-8")
}

/// `/favicon.svg`, also answered at `/favicon.ico` (where browsers and tools look without a
/// `<link rel="icon">`), so that no page load logs a 404.
pub fn icon() -> impl poem::Endpoint {
    asset(ICON, "image/svg+xml")
}
