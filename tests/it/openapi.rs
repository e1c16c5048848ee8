//! `/openapi.json` covers every route: the routes are read from `src/http/routes/*.rs` at test
//! time (the `.route("…", web::<method>()` registrations), so a new handler without a
//! `#[utoipa::path]` entry fails here.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::support::TestApp;
use crate::support::fixtures::Api;

/// `(METHOD, /path/{param})` of every `.route(` registration in one source file.
fn registered_routes(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        // rustfmt may break the line after `.route(`.
        rest = rest[at + ".route(".len()..].trim_start();
        let Some(quoted) = rest.strip_prefix('"') else {
            continue;
        };
        rest = quoted;
        let end = rest.find('"').expect("closing quote of the route path");
        let pattern = &rest[..end];
        rest = &rest[end..];
        let web = rest.find("web::").expect("web::<method>() after the path");
        let after = &rest[web + "web::".len()..];
        let method = &after[..after.find('(').expect("(")];
        out.push((method.to_uppercase(), openapi_path(pattern)));
    }
    out
}

/// actix `{id}` / `{id:regex}` → OpenAPI `{id}`.
fn openapi_path(pattern: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    let mut skipping = false;
    for c in pattern.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push(c);
            }
            '}' if in_param => {
                in_param = false;
                skipping = false;
                out.push(c);
            }
            ':' if in_param => skipping = true,
            _ if skipping => {}
            _ => out.push(c),
        }
    }
    out
}

#[test]
fn the_route_scanner_reads_registrations() {
    let src = r#"cfg.route("/a", web::get().to(x))
        .route("/b/{id}", web::post().to(y))
        .route("/c/{n:\d+}/d", web::patch().to(z));"#;
    assert_eq!(
        registered_routes(src),
        [
            ("GET".to_owned(), "/a".to_owned()),
            ("POST".to_owned(), "/b/{id}".to_owned()),
            ("PATCH".to_owned(), "/c/{n}/d".to_owned()),
        ]
    );
}

#[actix_web::test]
async fn openapi_lists_every_registered_route() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/routes");
    let mut in_code = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            in_code.extend(registered_routes(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    assert!(
        in_code.len() >= 19,
        "the scanner found the routes: {in_code:?}"
    );

    let t = TestApp::new().await;
    let api = Api::new(t.ctx.clone()).await;
    let res = api.get("/openapi.json", None).await;
    assert_eq!(res.status, 200);
    let doc: &Value = &res.body;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut in_doc = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            if item.get(method).is_some() {
                in_doc.insert((method.to_uppercase(), path.clone()));
            }
        }
    }

    let undocumented: Vec<_> = in_code.difference(&in_doc).collect();
    let phantom: Vec<_> = in_doc.difference(&in_code).collect();
    assert!(
        undocumented.is_empty() && phantom.is_empty(),
        "routes without an OpenAPI entry: {undocumented:?}\nOpenAPI entries without a route: {phantom:?}"
    );

    // Every path parameter in the document is declared as a parameter of its operation.
    for (method, path) in &in_doc {
        let op = &doc["paths"][path][method.to_lowercase()];
        for name in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
            let declared = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
            assert!(declared, "{method} {path} does not declare {name}");
        }
    }
}
