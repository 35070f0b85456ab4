//! The operator console: a web page on the admin listener for finding the
//! moment before a bad deploy, seeing what changed, and checking out or
//! planning a restore.
//!
//! The page, its script and its style are compiled into the binary (no
//! CDN, no network at run time, nothing to install beside it). They are
//! served without the admin token because they hold no data: a login form
//! and an empty shell, the same bytes for everyone. Every piece of data the
//! page shows comes from the admin API, behind the token, which the page
//! keeps in the browser tab's session storage (never in a URL, so never in
//! a log or a referrer).
//!
//! The Content-Security-Policy allows only these files and the admin API
//! itself: no inline script, no other origin. Keys and values in the page
//! are attacker-controlled text (anyone who can write to the database
//! writes them), so the page renders them as text only and the policy
//! stops a script smuggled in through one from running anyway.

use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Reply;

/// Where the console lives on the admin listener.
pub const PATH: &str = "/console/";

/// The embedded files: name under `assets/`, content type, bytes.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];
const INDEX: &str = include_str!("assets/index.html");

/// What the page may load and talk to: its own files and the admin API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// True for the paths the console answers (`/console` and below).
pub fn owns(path: &str) -> bool {
    path == "/console" || path.starts_with(PATH)
}

/// The answer to a request for a console path (see [`owns`]): the page,
/// one of its files, a redirect from `/console` to `console/` (the page
/// names its files relative to itself), 404 or 405; every one with the
/// console's security headers.
pub fn respond(path: &str, method: &Method) -> Response {
    secure(answer(path, method))
}

fn answer(path: &str, method: &Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed here");
    }
    if path == "/console" {
        // Relative, so that behind a proxy serving the admin listener
        // under a path (`/kv-admin/console`) the browser stays under it.
        let mut r = plain(StatusCode::PERMANENT_REDIRECT, "");
        r.headers_mut()
            .insert("location", HeaderValue::from_static("console/"));
        return r;
    }
    let rest = &path[PATH.len()..];
    let (content_type, body) = match rest {
        "" | "index.html" => ("text/html; charset=utf-8", INDEX),
        _ => match rest
            .strip_prefix("assets/")
            .and_then(|name| ASSETS.iter().find(|(n, _, _)| *n == name))
        {
            Some((_, ct, body)) => (*ct, *body),
            None => return plain(StatusCode::NOT_FOUND, "no such console file"),
        },
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    // The files change with the binary: always revalidate.
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = warp::reply::with_status(text, status).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Headers every console answer carries (see the module's docs).
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
}
