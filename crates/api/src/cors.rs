//! Cross-origin requests: browsers may call the API from the origins the operator lists (the
//! original web client is served from another origin than its API); any other origin is
//! answered `403 origin_not_allowed` in the usual envelope. The web client served at `/` calls
//! from the server's own origin, which is never cross-origin whatever the list says.

use poem::middleware::Cors;
use poem::{Endpoint, EndpointExt, IntoResponse, Request};
use ringline_domain::{ErrorCode, Refusal};

use crate::error::refusal_response;

/// `app` answering cross-origin requests from `origins` only (none: no CORS headers at all).
pub fn with_cors(app: impl Endpoint + 'static, origins: Vec<String>) -> impl Endpoint + 'static {
    app.with_if(!origins.is_empty(), cors(&origins)).around(|endpoint, mut req| async move {
        if same_origin(&req) {
            req.headers_mut().remove(poem::http::header::ORIGIN);
        }
        match endpoint.call(req).await {
            Ok(response) => Ok(response.into_response()),
            Err(error) if error.is::<poem::error::CorsError>() => {
                Ok(refusal_response(&Refusal::new(ErrorCode::OriginNotAllowed)))
            }
            Err(error) => Err(error),
        }
    })
}

/// Whether the request's `Origin` is the server itself (the authority the client addressed).
fn same_origin(req: &Request) -> bool {
    let header = |name| req.headers().get(name).and_then(|value: &poem::http::HeaderValue| value.to_str().ok());
    let (Some(origin), Some(host)) = (header(poem::http::header::ORIGIN), header(poem::http::header::HOST)) else {
        return false;
    };
    origin.split_once("://").is_some_and(|(scheme, authority)| matches!(scheme, "http" | "https") && authority == host)
}

fn cors(origins: &[String]) -> Cors {
    Cors::new()
        .allow_origins(origins.iter().map(String::as_str))
        .allow_credentials(true)
        .allow_methods(["GET", "POST", "PUT", "DELETE", "OPTIONS"])
        .allow_headers(["authorization", "content-type"])
        .max_age(600)
}
