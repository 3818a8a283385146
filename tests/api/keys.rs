//! API keys under `/v1/keys`, and project isolation: a key never sees another project's
//! executions or keys (404 for foreign ids, as for unknown ones).

use serde_json::{json, Value};

use crate::helpers::{assert_error, chat_body, spawn_app, TestApp, ADMIN_KEY};

/// `POST /v1/keys` as `by`; asserts the 201 and returns the created key (secret included).
async fn create_key_as(app: &TestApp, by: &str, body: Value) -> Value {
    let res = app.post("/v1/keys", by, &body).await;
    assert_eq!(res.status(), 201, "create key {body}");
    res.json().await.unwrap()
}

async fn delete(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.client
        .delete(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn rotate(app: &TestApp, id: &str, by: &str) -> reqwest::Response {
    app.post(&format!("/v1/keys/{id}/rotate"), by, &json!({}))
        .await
}

async fn revoke(app: &TestApp, id: &str, by: &str) -> reqwest::Response {
    delete(app, &format!("/v1/keys/{id}"), by).await
}

/// Whether `secret` is accepted (200 on a read every role may do) or refused (401).
async fn assert_key_works(app: &TestApp, secret: &str) {
    let res = app.get("/v1/executions", secret).await;
    assert_eq!(res.status(), 200, "key should be accepted");
}

async fn assert_key_refused(app: &TestApp, secret: &str) {
    let res = app.get("/v1/executions", secret).await;
    assert_error(res, 401, "unauthorized").await;
}

fn str_field<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is a string in {v}"))
}

#[actix_web::test]
async fn admin_creates_a_member_key_that_can_submit() {
    let app = spawn_app().await;

    let key = create_key_as(&app, ADMIN_KEY, json!({"name": "ci runner"})).await;
    assert!(str_field(&key, "id").starts_with("key_"), "{key}");
    assert_eq!(key["project_id"], "default");
    assert_eq!(key["role"], "member", "member is the default role");
    assert_eq!(key["name"], "ci runner");
    let secret = str_field(&key, "key");
    let prefix = str_field(&key, "prefix");
    assert!(!prefix.is_empty() && prefix.len() < secret.len(), "{key}");
    assert!(
        secret.starts_with(prefix),
        "prefix is the start of the secret: {key}"
    );

    let submitted = app
        .submit(secret, &chat_body("member-1", "hello", "chat-default"))
        .await;
    let id = str_field(&submitted, "id");
    assert!(id.starts_with("exec_"));
    let done = app.wait_terminal(secret, id).await;
    assert_eq!(done["status"], "completed", "{done}");
}

#[actix_web::test]
async fn key_list_never_shows_secrets() {
    let app = spawn_app().await;
    let member = create_key_as(&app, ADMIN_KEY, json!({"role": "member"})).await;
    let admin = create_key_as(&app, ADMIN_KEY, json!({"role": "admin"})).await;

    let res = app.get("/v1/keys", ADMIN_KEY).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    for created in [&member, &admin] {
        assert!(
            !text.contains(str_field(created, "key")),
            "a secret leaked into the list: {text}"
        );
    }
    let list: Value = serde_json::from_str(&text).unwrap();
    let data = list["data"].as_array().expect("`data` is an array");
    for created in [&member, &admin] {
        let listed = data
            .iter()
            .find(|k| k["id"] == created["id"])
            .unwrap_or_else(|| panic!("{} is listed: {text}", created["id"]));
        assert!(listed.get("key").is_none(), "no secret field: {listed}");
        assert_eq!(listed["role"], created["role"]);
        assert_eq!(listed["prefix"], created["prefix"]);
        assert_eq!(listed["project_id"], "default");
    }
    assert!(data.iter().all(|k| k.get("key").is_none()), "{text}");
}

#[actix_web::test]
async fn rotating_a_key_replaces_its_secret() {
    let app = spawn_app().await;
    let key = create_key_as(&app, ADMIN_KEY, json!({})).await;
    let id = str_field(&key, "id");
    let old = str_field(&key, "key");
    assert_key_works(&app, old).await;

    let res = rotate(&app, id, ADMIN_KEY).await;
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    assert_eq!(rotated["id"], id, "rotation keeps the key id");
    let new = str_field(&rotated, "key");
    assert_ne!(new, old);
    assert!(new.starts_with(str_field(&rotated, "prefix")), "{rotated}");
    assert!(rotated["rotated_at"].is_string(), "{rotated}");

    assert_key_refused(&app, old).await;
    assert_key_works(&app, new).await;
    app.submit(new, &chat_body("after-rotation", "hi", "chat-default"))
        .await;
}

#[actix_web::test]
async fn revoking_a_key_locks_it_out() {
    let app = spawn_app().await;
    let key = create_key_as(&app, ADMIN_KEY, json!({})).await;
    let id = str_field(&key, "id");
    let secret = str_field(&key, "key");
    assert_key_works(&app, secret).await;

    let res = revoke(&app, id, ADMIN_KEY).await;
    assert_eq!(res.status(), 200);
    let revoked: Value = res.json().await.unwrap();
    assert_eq!(revoked["id"], id);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert!(revoked.get("key").is_none(), "{revoked}");

    assert_key_refused(&app, secret).await;
    let res = app
        .post(
            "/v1/executions",
            secret,
            &chat_body("revoked", "hi", "chat-default"),
        )
        .await;
    assert_error(res, 401, "unauthorized").await;

    // A revoked key is gone: it can be neither revoked again nor brought back by a rotation.
    assert_error(revoke(&app, id, ADMIN_KEY).await, 404, "not_found").await;
    assert_error(rotate(&app, id, ADMIN_KEY).await, 404, "not_found").await;
    assert_key_refused(&app, secret).await;
}

#[actix_web::test]
async fn unknown_key_ids_are_not_found() {
    let app = spawn_app().await;
    for id in ["key_doesnotexist", "nonsense"] {
        assert_error(rotate(&app, id, ADMIN_KEY).await, 404, "not_found").await;
        assert_error(revoke(&app, id, ADMIN_KEY).await, 404, "not_found").await;
    }
}

#[actix_web::test]
async fn member_keys_cannot_manage_keys() {
    let app = spawn_app().await;
    let member = create_key_as(&app, ADMIN_KEY, json!({"role": "member"})).await;
    let secret = str_field(&member, "key");
    let own_id = str_field(&member, "id");
    let other = create_key_as(&app, ADMIN_KEY, json!({"role": "member"})).await;
    let other_id = str_field(&other, "id");

    assert_error(app.get("/v1/keys", secret).await, 403, "forbidden").await;
    let res = app.post("/v1/keys", secret, &json!({})).await;
    assert_error(res, 403, "forbidden").await;
    let res = app
        .post("/v1/keys", secret, &json!({"role": "admin"}))
        .await;
    assert_error(res, 403, "forbidden").await;
    for id in [own_id, other_id] {
        assert_error(rotate(&app, id, secret).await, 403, "forbidden").await;
        assert_error(revoke(&app, id, secret).await, 403, "forbidden").await;
    }
    // Nothing changed.
    assert_key_works(&app, secret).await;
    assert_key_works(&app, str_field(&other, "key")).await;
}

#[actix_web::test]
async fn key_creation_rejects_bad_input() {
    let app = spawn_app().await;
    let res = app
        .post("/v1/keys", ADMIN_KEY, &json!({"project_id": "no spaces!"}))
        .await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("project_id"), "{message}");
    let res = app
        .post("/v1/keys", ADMIN_KEY, &json!({"role": "superuser"}))
        .await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("role"), "{message}");
    let res = app
        .post("/v1/keys", ADMIN_KEY, &json!({"roles": "admin"}))
        .await;
    let message = assert_error(res, 400, "invalid_request").await;
    assert!(message.contains("roles"), "{message}");
}

#[actix_web::test]
async fn executions_are_invisible_to_other_projects() {
    let app = spawn_app().await;
    let acme = app.create_key("acme", "member").await;
    let globex = app.create_key("globex", "member").await;
    let globex_admin = app.create_key("globex", "admin").await;

    let submitted = app
        .submit(&acme, &chat_body("acme-1", "secret plans", "chat-default"))
        .await;
    let id = str_field(&submitted, "id");

    for key in [&globex, &globex_admin] {
        let res = app.get(&format!("/v1/executions/{id}"), key).await;
        let message = assert_error(res, 404, "not_found").await;
        assert!(!message.contains("acme"), "{message}");
        let res = app.get(&format!("/v1/executions/{id}/events"), key).await;
        assert_error(res, 404, "not_found").await;
        let res = app
            .post(&format!("/v1/executions/{id}/cancel"), key, &json!({}))
            .await;
        assert_error(res, 404, "not_found").await;

        let res = app.get("/v1/executions", key).await;
        assert_eq!(res.status(), 200);
        let list: Value = res.json().await.unwrap();
        let data = list["data"].as_array().unwrap();
        assert!(data.iter().all(|e| e["id"] != id), "{list}");
        assert!(data.is_empty(), "globex has no executions: {list}");
    }
    // Same answers as for an id nobody has.
    let res = app.get("/v1/executions/exec_unknown", &globex).await;
    assert_error(res, 404, "not_found").await;

    // The owner still sees it, listed, and globex's cancel had no effect.
    let done = app.wait_terminal(&acme, id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let res = app.get("/v1/executions", &acme).await;
    let list: Value = res.json().await.unwrap();
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, [id], "{list}");
    let events = app.sse_all(&acme, id, None).await;
    assert_eq!(events.last().unwrap().event, "done");
}

#[actix_web::test]
async fn project_admins_manage_only_their_own_keys() {
    let app = spawn_app().await;
    let acme_member = create_key_as(&app, ADMIN_KEY, json!({"project_id": "acme"})).await;
    let acme_admin = create_key_as(
        &app,
        ADMIN_KEY,
        json!({"project_id": "acme", "role": "admin"}),
    )
    .await;
    let globex_admin = create_key_as(
        &app,
        ADMIN_KEY,
        json!({"project_id": "globex", "role": "admin"}),
    )
    .await;
    assert_eq!(acme_member["project_id"], "acme");
    assert_eq!(globex_admin["project_id"], "globex");
    assert_eq!(globex_admin["role"], "admin");
    let globex = str_field(&globex_admin, "key");

    let default_member = create_key_as(&app, ADMIN_KEY, json!({})).await;
    for victim in [&acme_member, &acme_admin, &default_member] {
        let id = str_field(victim, "id");
        assert_error(rotate(&app, id, globex).await, 404, "not_found").await;
        assert_error(revoke(&app, id, globex).await, 404, "not_found").await;
        assert_key_works(&app, str_field(victim, "key")).await;
    }

    for project in ["acme", "default", "initech"] {
        let res = app
            .post("/v1/keys", globex, &json!({"project_id": project}))
            .await;
        assert_error(res, 403, "forbidden").await;
    }

    // Its own project is fine, with or without naming it.
    let own = create_key_as(&app, globex, json!({})).await;
    assert_eq!(own["project_id"], "globex");
    let named = create_key_as(&app, globex, json!({"project_id": "globex"})).await;
    assert_eq!(named["project_id"], "globex");

    let res = app.get("/v1/keys", globex).await;
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.unwrap();
    let mut listed: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["project_id"], "globex", "{list}");
            k["id"].as_str().unwrap().to_string()
        })
        .collect();
    listed.sort();
    let mut expected: Vec<_> = [&globex_admin, &own, &named]
        .iter()
        .map(|k| str_field(k, "id").to_string())
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    // And an acme admin can manage acme's keys.
    let acme = str_field(&acme_admin, "key");
    let res = rotate(&app, str_field(&acme_member, "id"), acme).await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn idempotency_keys_are_scoped_per_project() {
    let app = spawn_app().await;
    let acme = app.create_key("acme", "member").await;
    let globex = app.create_key("globex", "member").await;
    let body = chat_body("shared-key-1", "same prompt", "chat-default");

    let a = app.submit(&acme, &body).await;
    let g = app.submit(&globex, &body).await;
    let (a_id, g_id) = (str_field(&a, "id"), str_field(&g, "id"));
    assert_ne!(a_id, g_id, "two projects, two executions");
    assert!(
        a["websocket_channel"].as_str().unwrap().contains(":acme:"),
        "{a}"
    );
    assert!(
        g["websocket_channel"]
            .as_str()
            .unwrap()
            .contains(":globex:"),
        "{g}"
    );

    // Within a project the key still deduplicates, and each project sees only its own.
    let res = app.post("/v1/executions", &acme, &body).await;
    assert_eq!(res.status(), 200);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["id"], a_id);
    let res = app.post("/v1/executions", &globex, &body).await;
    assert_eq!(res.status(), 200);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["id"], g_id);

    for (key, own, foreign) in [(&acme, a_id, g_id), (&globex, g_id, a_id)] {
        let done = app.wait_terminal(key, own).await;
        assert_eq!(done["status"], "completed", "{done}");
        let res = app.get(&format!("/v1/executions/{foreign}"), key).await;
        assert_error(res, 404, "not_found").await;
    }
}
