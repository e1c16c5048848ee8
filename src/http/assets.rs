//! The browser apps: `/board/` (vendor staff) and `/console/` (operators), served from the
//! files under `web/` embedded in the binary (`rust-embed`): no CDN, no file system and no
//! network at run time.
//!
//! - Pages: `web/<app>/index.html` answers `/<app>/` and every `/<app>/<route>` below it
//!   that is not a file (client-side routes), with `Cache-Control: no-cache` and the page
//!   CSP ([`PAGE_CSP`]: scripts, styles and connections from this origin only, nothing
//!   inline). `/<app>` redirects to `/<app>/`.
//! - Assets: every file under `web/` is served at `/static/<hash>/<path>`, where `<hash>` is
//!   the SHA-256 of all embedded files (names and contents), so any change gives every asset
//!   a new URL. They are `immutable` for a year; another hash answers 404 (a stale page must
//!   not cache new bytes under an old name). Relative ES-module imports (`./api.js`,
//!   `../shared/dom.js`) stay inside the hashed directory, so the modules need no rewriting.
//! - Pages refer to assets through the `{{STATIC}}` placeholder, replaced by
//!   `/static/<hash>` once at startup.
//! - Compression: text files are gzipped once, when the table is built; a client sending
//!   `Accept-Encoding: gzip` gets those bytes (`Vary: Accept-Encoding` always).

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The embedded files (the repository's `web/` directory).
#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Files;

/// The apps with a page: `web/<app>/index.html`, served at `/<app>/`.
pub const APPS: [&str; 2] = ["board", "console"];

/// Placeholder in pages for `/static/<hash>`.
const STATIC_PLACEHOLDER: &str = "{{STATIC}}";

/// The Content-Security-Policy of the pages: everything from this origin, nothing inline,
/// no eval, no framing, forms post only here. `connect-src 'self'` covers same-origin
/// `ws:`/`wss:` in current browsers (CSP Level 3).
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; manifest-src 'self'; \
     media-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// One servable file.
struct Asset {
    content_type: &'static str,
    raw: Vec<u8>,
    /// The gzip encoding, when it is smaller than `raw`.
    gzip: Option<Vec<u8>>,
}

/// Every file, by path under `web/`, and the bundle hash.
struct Table {
    hash: String,
    prefix: String,
    assets: HashMap<String, Asset>,
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "wav" => "audio/wav",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type.starts_with("application/json")
        || content_type.starts_with("application/manifest")
        || content_type.starts_with("image/svg")
}

fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).ok()?;
    let out = enc.finish().ok()?;
    (out.len() < bytes.len()).then_some(out)
}

fn build_table() -> Table {
    let mut names: Vec<String> = Files::iter().map(|n| n.into_owned()).collect();
    names.sort();
    let mut hasher = Sha256::new();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let Some(file) = Files::get(&name) else {
            continue;
        };
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(file.metadata.sha256_hash());
        files.push((name, file.data.into_owned()));
    }
    let hash = hex::encode(&hasher.finalize()[..6]);
    let prefix = format!("/static/{hash}");
    let assets = files
        .into_iter()
        .map(|(name, bytes)| {
            let content_type = content_type(&name);
            let raw = if name.ends_with(".html") {
                String::from_utf8_lossy(&bytes)
                    .replace(STATIC_PLACEHOLDER, &prefix)
                    .into_bytes()
            } else {
                bytes
            };
            let gzip = if compressible(content_type) {
                gzip(&raw)
            } else {
                None
            };
            (
                name,
                Asset {
                    content_type,
                    raw,
                    gzip,
                },
            )
        })
        .collect();
    Table {
        hash,
        prefix,
        assets,
    }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(build_table)
}

/// `/static/<hash>`: the URL prefix of the current assets (for tests and pages).
pub fn static_prefix() -> &'static str {
    &table().prefix
}

fn accepts_gzip(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn respond(req: &HttpRequest, asset: &Asset, cache_control: &'static str) -> HttpResponse {
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CONTENT_TYPE, asset.content_type))
        .insert_header((header::CACHE_CONTROL, cache_control))
        .insert_header((header::VARY, "Accept-Encoding"));
    match &asset.gzip {
        Some(gz) if accepts_gzip(req) => res
            .insert_header((header::CONTENT_ENCODING, "gzip"))
            .body(gz.clone()),
        _ => res.body(asset.raw.clone()),
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError::not_found(format!("no such {what}"))
}

/// `GET /static/{hash}/{path}`: an embedded file, cacheable forever under this hash.
pub async fn asset(req: HttpRequest, path: web::Path<(String, String)>) -> HttpResponse {
    let (hash, file) = path.into_inner();
    let t = table();
    match t.assets.get(&file) {
        Some(a) if hash == t.hash && !file.ends_with(".html") => {
            respond(&req, a, "public, max-age=31536000, immutable")
        }
        _ => actix_web::ResponseError::error_response(&not_found("asset")),
    }
}

/// `GET /<app>/…`: the app's page (client-side routes included), never cached stale.
pub async fn page(req: HttpRequest) -> HttpResponse {
    let app = req
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    let Some(a) = table().assets.get(&format!("{app}/index.html")) else {
        return actix_web::ResponseError::error_response(&not_found("page"));
    };
    let mut res = respond(&req, a, "no-cache");
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    res
}

/// `GET /<app>`: to `/<app>/` (relative URLs in the page resolve below it).
pub async fn to_slash(req: HttpRequest) -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, format!("{}/", req.path())))
        .finish()
}

/// Registers the pages and `/static/`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/static/{hash}/{path:.*}", web::get().to(asset));
    for app in APPS {
        cfg.route(&format!("/{app}"), web::get().to(to_slash))
            .route(&format!("/{app}/"), web::get().to(page))
            .route(&format!("/{app}/{{route:.*}}"), web::get().to(page));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_app_has_a_page_and_pages_point_at_the_hashed_prefix() {
        let t = table();
        assert_eq!(t.hash.len(), 12);
        for app in APPS {
            let page = t.assets.get(&format!("{app}/index.html")).unwrap();
            let html = String::from_utf8(page.raw.clone()).unwrap();
            assert!(!html.contains(STATIC_PLACEHOLDER), "{app}");
            assert!(html.contains(&t.prefix), "{app}");
            assert!(!html.contains("<style"), "{app}: inline style");
            assert!(!html.contains(" style="), "{app}: inline style");
            // Every <script> loads a file from this origin.
            for chunk in html.split("<script").skip(1) {
                let tag = chunk.split('>').next().unwrap();
                assert!(tag.contains(&format!("src=\"{}", t.prefix)), "{app}: {tag}");
            }
        }
    }

    #[test]
    fn text_assets_are_precompressed() {
        let t = table();
        let js = t.assets.get("shared/api.js").unwrap();
        assert!(js.gzip.as_ref().unwrap().len() < js.raw.len());
        assert_eq!(js.content_type, "text/javascript; charset=utf-8");
    }
}
