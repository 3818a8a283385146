//! CORS: a listed origin gets its preflight answered and may read the exposed headers; any
//! other origin is served without CORS headers (the browser then withholds the answer).

use serde_json::json;
use switchyard::settings::Settings;

use crate::helpers::*;

const ALLOWED: &str = "http://app.example:3000";

async fn app() -> TestApp {
    let toml = format!(
        "{}\n[cors]\nallowed_origins = [\"{ALLOWED}\"]\n",
        config(&[])
    );
    spawn_app_with(&toml, |_| {}).await
}

#[actix_web::test]
async fn a_listed_origin_gets_its_preflight_and_the_exposed_headers() {
    let app = app().await;
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/chat/completions"))
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED);
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("idempotency-key"), "{headers}");
    assert!(headers.contains("authorization"), "{headers}");

    let body = json!({"model": "chat-default", "messages": [{"role": "user", "content": "hi"}]});
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("origin", ALLOWED)
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED);
    let exposed = h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-switchyard-execution-id"), "{exposed}");
    assert!(
        exposed.contains("x-ratelimit-remaining-requests"),
        "{exposed}"
    );
    assert!(exposed.contains("retry-after"), "{exposed}");
}

#[actix_web::test]
async fn other_origins_get_no_cors_headers_but_same_origin_pages_still_work() {
    let app = app().await;
    let res = app
        .client
        .get(app.url("/v1/models"))
        .header("origin", "http://evil.example")
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    // Served (the dashboard sends its own origin too), but nothing lets a browser read it.
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("access-control-allow-origin").is_none());

    let default = spawn_app().await;
    let res = default
        .client
        .get(default.url("/v1/models"))
        .header("origin", ALLOWED)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("access-control-allow-origin").is_none(),
        "no origin is allowed by default"
    );
}

#[test]
fn an_origin_with_a_path_is_refused_at_start_naming_the_field() {
    let toml = format!(
        "{}\n[cors]\nallowed_origins = [\"*\", \"http://app.example/path\"]\n",
        config(&[])
    );
    let err = Settings::parse(&toml).unwrap_err().to_string();
    assert!(err.contains("cors.allowed_origins[1]"), "{err}");
}
