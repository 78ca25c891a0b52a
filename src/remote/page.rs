//! `/`: the board's own web page, live captions for a kiosk screen and a talk view for
//! installers (`page/`), built into the binary: nothing it loads comes from outside the
//! board (its Content-Security-Policy says so to the browser). `server.page_dir` replaces
//! its files, read at each request, for a kiosk's own branding.

use std::path::Path;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One file of the page.
pub struct Asset {
    /// Where it is served.
    pub route: &'static str,
    /// Its name in `page/` and in `server.page_dir`.
    pub file: &'static str,
    pub mime: &'static str,
    pub built_in: &'static str,
}

/// An asset of `page/`, built in.
macro_rules! asset {
    ($route:literal, $file:literal, $mime:literal) => {
        Asset {
            route: $route,
            file: $file,
            mime: $mime,
            built_in: include_str!(concat!("page/", $file)),
        }
    };
}

pub const ASSETS: [Asset; 4] = [
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("/ogg.js", "ogg.js", "text/javascript; charset=utf-8"),
];

/// The largest file taken from `server.page_dir`.
const MAX_FILE: u64 = 1 << 20;

/// The page and what it starts (its audio worklet, from a blob) come from this server alone;
/// it connects to this server alone.
const POLICY: &str = "default-src 'self'; script-src 'self' blob:; worker-src 'self' blob:; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; media-src 'self' blob:; \
    connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'";

/// The asset, from `page_dir` when it has the file, else built in.
pub fn serve(asset: &Asset, page_dir: Option<&Path>) -> Response {
    let body = match page_dir.map(|d| read(&d.join(asset.file))) {
        Some(Ok(Some(text))) => text,
        None | Some(Ok(None)) => asset.built_in.to_owned(),
        Some(Err(why)) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("key `server.page_dir`: {why}\n"),
            )
                .into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, asset.mime),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// A page file: None when there is none (the built-in one is served), an error naming it
/// when it cannot be read, is too large or is not UTF-8.
fn read(path: &Path) -> Result<Option<String>, String> {
    let name = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{name}: {e}")),
        Ok(m) if m.len() > MAX_FILE => return Err(format!("{name}: over {MAX_FILE} bytes")),
        Ok(_) => {}
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| format!("{name}: not UTF-8 text"))
}
