//! Who may use the remote-client routes (`/api/chat`, `/api/settings`, `/api/events`):
//!
//! - **Browsers' origin.** A request that carries an `Origin` header (every browser's
//!   websocket, its posts and its cross-site requests) is taken only from the server's own
//!   origin (the scheme of this listener, the `Host` the request names) or one of
//!   `server.allowed_origins`; else 403. A request without one is a program's (the official
//!   clients, curl): the token is what guards it.
//! - **The token.** With `server.token` set, a request gives it as `Authorization: Bearer …`
//!   or as the query parameter `token`; else 401. Compared in constant time.
//! - **Settings are JSON.** `POST /api/settings` needs `Content-Type: application/json`
//!   (else 415): a page of another site cannot send that without asking the server first (a
//!   CORS preflight, which this server never grants).
//!
//! `/healthz`, `/metrics` and the page's files stay open: they are the operator's, and carry
//! nothing of a conversation.

use axum::http::{HeaderMap, Method, StatusCode, Uri, header};

/// The rules of one server, from `[server]`.
#[derive(Clone, Debug, Default)]
pub struct Access {
    token: Option<String>,
    origins: Vec<String>,
    any_origin: bool,
}

/// A request turned away: its status and a one-line reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub why: String,
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Result<(), Refusal> {
    Err(Refusal {
        status,
        why: why.into(),
    })
}

impl Access {
    /// `token`: "" for none; `allowed_origins`: exact origins, or "*" for any.
    pub fn new(token: &str, allowed_origins: &[String]) -> Access {
        Access {
            token: (!token.is_empty()).then(|| token.to_string()),
            origins: allowed_origins
                .iter()
                .map(|o| normal_origin(o).to_ascii_lowercase())
                .collect(),
            any_origin: allowed_origins.iter().any(|o| o == "*"),
        }
    }

    /// Whether a request to a remote-client route may go on; `tls`: whether it came over
    /// https. Other paths are not checked.
    pub fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        tls: bool,
    ) -> Result<(), Refusal> {
        let path = uri.path();
        let post = method == Method::POST;
        let (origin, json) = match path {
            "/api/chat" | "/api/events" => (true, false),
            "/api/settings" => (post, post),
            _ => return Ok(()),
        };
        if origin {
            self.check_origin(headers, tls)?;
        }
        self.check_token(uri, headers)?;
        if json {
            check_json(headers)?;
        }
        Ok(())
    }

    fn check_origin(&self, headers: &HeaderMap, tls: bool) -> Result<(), Refusal> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        if self.any_origin {
            return Ok(());
        }
        let Ok(origin) = origin.to_str() else {
            return refuse(StatusCode::FORBIDDEN, "forbidden: the Origin is not text");
        };
        let origin = normal_origin(origin).to_ascii_lowercase();
        let scheme = if tls { "https" } else { "http" };
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|host| normal_origin(&format!("{scheme}://{host}")).to_ascii_lowercase());
        if own.as_deref() == Some(origin.as_str()) || self.origins.contains(&origin) {
            return Ok(());
        }
        let mut shown: String = origin.chars().take(64).collect();
        if shown.len() < origin.len() {
            shown.push('…');
        }
        refuse(
            StatusCode::FORBIDDEN,
            format!(
                "forbidden: pages from {shown} may not use this server (not its own origin nor one of `server.allowed_origins`)"
            ),
        )
    }

    fn check_token(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let query = uri
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
        let given: Vec<&str> = bearer.into_iter().chain(query).collect();
        if given.is_empty() {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized: this server needs its token (header `Authorization: Bearer <token>` or `?token=<token>`)",
            );
        }
        // Every given token is compared, whichever matches.
        let mut ok = false;
        for g in given {
            ok |= same(g.as_bytes(), token.as_bytes());
        }
        if ok {
            Ok(())
        } else {
            refuse(StatusCode::UNAUTHORIZED, "unauthorized: wrong token")
        }
    }
}

/// `POST /api/settings` takes JSON alone: `application/json`, with any parameters.
fn check_json(headers: &HeaderMap) -> Result<(), Refusal> {
    let ty = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let essence = ty.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    refuse(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "the settings are JSON: send `Content-Type: application/json`",
    )
}

/// An origin without the scheme's default port (`http://h:80` is `http://h`), as browsers
/// write it.
fn normal_origin(o: &str) -> &str {
    if let Some(h) = o.strip_suffix(":80")
        && h.starts_with("http://")
    {
        return h;
    }
    if let Some(h) = o.strip_suffix(":443")
        && h.starts_with("https://")
    {
        return h;
    }
    o
}

/// `given == secret`, in a time that depends on the lengths alone.
fn same(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != secret.len());
    for (i, &s) in secret.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!s);
        diff |= std::hint::black_box(g ^ s);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn status(
        a: &Access,
        method: Method,
        uri: &str,
        pairs: &[(&str, &str)],
        tls: bool,
    ) -> Option<StatusCode> {
        a.check(&method, &uri.parse().unwrap(), &headers(pairs), tls)
            .err()
            .map(|r| r.status)
    }

    const TOKEN: &str = "0123456789abcdef";

    #[test]
    fn origins_are_the_servers_own_or_allowed() {
        let a = Access::new("", &["https://kiosk.example".into()]);
        let get = |uri: &str, pairs: &[(&str, &str)], tls| status(&a, Method::GET, uri, pairs, tls);
        let host = ("Host", "board.local:8990");
        // Programs send no Origin.
        assert_eq!(get("/api/chat", &[host], false), None);
        assert_eq!(
            get(
                "/api/chat",
                &[host, ("Origin", "http://board.local:8990")],
                false
            ),
            None
        );
        assert_eq!(
            get(
                "/api/chat",
                &[host, ("Origin", "HTTP://Board.local:8990")],
                false
            ),
            None
        );
        // The scheme is the listener's.
        let forbidden = Some(StatusCode::FORBIDDEN);
        assert_eq!(
            get(
                "/api/chat",
                &[host, ("Origin", "https://board.local:8990")],
                false
            ),
            forbidden
        );
        assert_eq!(
            get(
                "/api/chat",
                &[host, ("Origin", "https://board.local:8990")],
                true
            ),
            None
        );
        assert_eq!(
            get(
                "/api/chat",
                &[host, ("Origin", "http://board.local:8991")],
                false
            ),
            forbidden
        );
        assert_eq!(
            get(
                "/api/events",
                &[host, ("Origin", "http://evil.example")],
                false
            ),
            forbidden
        );
        assert_eq!(
            get("/api/chat", &[host, ("Origin", "null")], false),
            forbidden
        );
        assert_eq!(
            get("/api/chat", &[("Origin", "http://board.local:8990")], false),
            forbidden
        );
        // Default ports are the same origin written either way.
        assert_eq!(
            get(
                "/api/chat",
                &[("Host", "board"), ("Origin", "http://board:80")],
                false
            ),
            None
        );
        assert_eq!(
            get(
                "/api/chat",
                &[("Host", "board:443"), ("Origin", "https://board")],
                true
            ),
            None
        );
        // Listed origins, exactly.
        assert_eq!(
            get(
                "/api/chat",
                &[host, ("Origin", "https://kiosk.example")],
                false
            ),
            None
        );
        assert_eq!(
            get(
                "/api/chat",
                &[host, ("Origin", "https://kiosk.example:444")],
                false
            ),
            forbidden
        );
        assert_eq!(
            get(
                "/api/chat",
                &[host, ("Origin", "http://kiosk.example")],
                false
            ),
            forbidden
        );
        // Reading the settings is no request a page of another site can read the answer of.
        assert_eq!(
            get(
                "/api/settings",
                &[host, ("Origin", "http://evil.example")],
                false
            ),
            None
        );
        assert_eq!(
            get(
                "/healthz",
                &[host, ("Origin", "http://evil.example")],
                false
            ),
            None
        );
        let any = Access::new("", &["*".into()]);
        assert_eq!(
            status(
                &any,
                Method::GET,
                "/api/chat",
                &[host, ("Origin", "http://evil.example")],
                false
            ),
            None
        );
    }

    #[test]
    fn a_set_token_is_needed_by_header_or_query() {
        let a = Access::new(TOKEN, &[]);
        let get = |uri: &str, pairs: &[(&str, &str)]| status(&a, Method::GET, uri, pairs, false);
        let no = Some(StatusCode::UNAUTHORIZED);
        for path in ["/api/chat", "/api/events", "/api/settings"] {
            assert_eq!(get(path, &[]), no, "{path}");
            assert_eq!(get(&format!("{path}?token={TOKEN}"), &[]), None, "{path}");
            assert_eq!(
                get(path, &[("Authorization", &format!("Bearer {TOKEN}"))]),
                None
            );
        }
        assert_eq!(
            get(
                "/api/chat",
                &[("Authorization", &format!("bearer  {TOKEN}"))]
            ),
            None
        );
        assert_eq!(get(&format!("/api/chat?x=1&token={TOKEN}&y=2"), &[]), None);
        assert_eq!(get("/api/chat?token=0123456789abcdeF", &[]), no);
        assert_eq!(get("/api/chat?token=0123456789abcde", &[]), no);
        assert_eq!(get(&format!("/api/chat?token={TOKEN}0"), &[]), no);
        assert_eq!(get("/api/chat?token=", &[]), no);
        assert_eq!(
            get("/api/chat", &[("Authorization", &format!("Basic {TOKEN}"))]),
            no
        );
        assert_eq!(get(&format!("/api/chat?tok={TOKEN}"), &[]), no);
        // A wrong header and a right query (a page behind a proxy that adds its own).
        assert_eq!(
            get(
                &format!("/api/chat?token={TOKEN}"),
                &[("Authorization", "Bearer x")]
            ),
            None
        );
        // The status routes and the page stay open.
        for open in ["/healthz", "/metrics", "/", "/app.js"] {
            assert_eq!(get(open, &[]), None, "{open}");
        }
        let why = a
            .check(
                &Method::GET,
                &"/api/chat".parse().unwrap(),
                &HeaderMap::new(),
                false,
            )
            .unwrap_err()
            .why;
        assert!(why.contains("token") && !why.contains('\n'), "{why}");
    }

    #[test]
    fn settings_are_posted_as_json() {
        let a = Access::new("", &[]);
        let post = |ty: Option<&str>| {
            let mut pairs = vec![("Host", "b")];
            if let Some(t) = ty {
                pairs.push(("Content-Type", t));
            }
            status(&a, Method::POST, "/api/settings", &pairs, false)
        };
        assert_eq!(post(Some("application/json")), None);
        assert_eq!(post(Some("Application/JSON; charset=utf-8")), None);
        let no = Some(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(post(Some("application/x-www-form-urlencoded")), no);
        assert_eq!(post(Some("text/plain")), no);
        assert_eq!(post(Some("multipart/form-data; boundary=x")), no);
        assert_eq!(post(Some("application/jsonx")), no);
        assert_eq!(post(None), no);
        // The origin is checked before the body's type, the token between.
        let t = Access::new(TOKEN, &[]);
        let cross = [
            ("Host", "b"),
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain"),
        ];
        assert_eq!(
            status(&t, Method::POST, "/api/settings", &cross, false),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(&t, Method::POST, "/api/settings", &cross[2..], false),
            Some(StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abd", b"abc"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"abcd", b"abc"));
        assert!(!same(b"", b"abc"));
        // A shorter given token padded with the secret's complement never matches.
        assert!(!same(b"\x00", b"\x00\xff"));
    }
}
