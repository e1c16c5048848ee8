//! `/openapi.json` covers every route: the routes are read from `src/http/routes/*.rs` at test
//! time (the `.route("…", web::<method>()` registrations), so a new handler without a
//! `#[utoipa::path]` entry fails here.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::support::TestApp;
use crate::support::fixtures::{Api, World};

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

    // operationId must be unique (OpenAPI 3.1 §4.8.10.1); clients and fuzzers key on it.
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if let Some(id) = op["operationId"].as_str() {
                assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
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

/// Issue 16 item 5 and issue 17 item 9: every error response is documented as
/// `application/problem+json`, every operation lists the problems any request can meet, and
/// `ProblemCode` lists the error-code table.
#[actix_web::test]
async fn errors_are_documented_as_problems_with_the_code_table() {
    let t = TestApp::new().await;
    let api = Api::new(t.ctx.clone()).await;
    let doc = api.get("/openapi.json", None).await.body;

    let codes: Vec<&str> = doc["components"]["schemas"]["ProblemCode"]["enum"]
        .as_array()
        .expect("ProblemCode enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for code in [
        "validation",
        "not-found",
        "method-not-allowed",
        "rate-limited",
        "internal",
    ] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }

    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for shared in ["400", "429", "500", "503"] {
                assert!(
                    responses.contains_key(shared),
                    "{method} {path} does not document {shared}"
                );
            }
            if op.get("requestBody").is_some() {
                for shared in ["413", "415"] {
                    assert!(
                        responses.contains_key(shared),
                        "{method} {path} reads a body but does not document {shared}"
                    );
                }
            }
            for (status, response) in responses {
                if !(status.starts_with('4') || status.starts_with('5')) {
                    continue;
                }
                let types: Vec<&String> = response["content"]
                    .as_object()
                    .map(|c| c.keys().collect())
                    .unwrap_or_default();
                assert_eq!(
                    types,
                    ["application/problem+json"],
                    "{method} {path} {status}"
                );
            }
        }
    }
}

/// Issue 17 item 9: a documented path asked with an undeclared method answers 405 with
/// `Allow`, as a problem; an unknown path stays 404.
#[actix_web::test]
async fn an_undeclared_method_on_a_known_path_is_405_with_allow() {
    let t = TestApp::new().await;
    let api = Api::new(t.ctx.clone()).await;

    let res = api.delete("/orders", None).await;
    res.assert_problem(405);
    assert_eq!(res.header("allow"), Some("GET, POST"));
    assert_eq!(
        res.body["type"],
        "https://itsur.dev/problems/method-not-allowed"
    );

    let id = uuid::Uuid::now_v7();
    let res = api
        .send(actix_web::test::TestRequest::put().uri(&format!("/orders/{id}")))
        .await;
    res.assert_problem(405);
    assert!(
        res.header("allow").is_some_and(|a| a.contains("GET")),
        "{:?}",
        res.header("allow")
    );

    // A static path that a templated route would also match (`/flows/{id}` has PUT) is
    // answered for the static one: its methods, not a 404 for a malformed id.
    let world = World::create(&t.ctx).await;
    let admin = api.login(&world.a.admin.email).await;
    let res = api
        .send(
            actix_web::test::TestRequest::put()
                .uri("/flows/nodes")
                .insert_header(("Authorization", format!("Bearer {}", admin.access))),
        )
        .await;
    res.assert_problem(405);
    assert_eq!(res.header("allow"), Some("GET"));
    // A malformed id on a templated path that has the method stays a 404.
    api.get("/orders/not-an-id", admin.token())
        .await
        .assert_problem(404);

    api.delete("/no/such/path", None).await.assert_problem(404);
}
