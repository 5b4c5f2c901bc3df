//! Page-number pagination as Django REST Framework does it: `?page=N` (1-based, 10 a page),
//! `{count, next, previous, results}` with absolute links, and 404 `invalid_page` past the end.

use poem::Request;
use ringline_domain::{ErrorCode, PageRequest, UserId};

use crate::error::ApiError;

/// Items per page, as in the original app.
pub const PAGE_SIZE: u32 = 10;

fn invalid_page() -> ApiError {
    ApiError::new(ErrorCode::InvalidPage)
}

/// The page asked for by `?page=` (absent or empty: the first).
///
/// # Errors
/// 404 `invalid_page` for anything but a positive integer.
pub fn requested(raw: Option<&str>) -> Result<PageRequest, ApiError> {
    let page = match raw {
        None | Some("") => 1,
        Some(raw) => raw.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(invalid_page)?,
    };
    Ok(PageRequest { page, per_page: PAGE_SIZE })
}

/// The `next` and `previous` links of `page` out of `total` items.
///
/// # Errors
/// 404 `invalid_page` when `page` is past the last page (the first page always exists).
pub fn links(
    req: &Request,
    page: PageRequest,
    total: u64,
    with_user: Option<&UserId>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let pages = total.div_ceil(u64::from(page.per_page)).max(1);
    if u64::from(page.page) > pages {
        return Err(invalid_page());
    }
    let link = |n: u32| url(req, n, with_user);
    Ok(((u64::from(page.page) < pages).then(|| link(page.page + 1)), (page.page > 1).then(|| link(page.page - 1))))
}

/// An absolute link to page `n` of the same listing, as DRF builds them.
fn url(req: &Request, n: u32, with_user: Option<&UserId>) -> String {
    let headers = req.headers();
    let host = headers.get("x-forwarded-host").or_else(|| headers.get("host")).and_then(|h| h.to_str().ok());
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("page", &n.to_string());
    if let Some(user) = with_user {
        query.append_pair("user_id", user.as_str());
    }
    // Requests are routed without their trailing slash; links carry the contract's form.
    let path = format!("{}/", req.uri().path().trim_end_matches('/'));
    match host {
        Some(host) => format!("{scheme}://{host}{path}?{}", query.finish()),
        None => format!("{path}?{}", query.finish()),
    }
}
