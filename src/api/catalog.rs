//! `/v1/structures` and `/v1/workflows`: named, versioned definitions. Any key of a project
//! reads them (its own and the config's); admin keys create and replace. Replacing makes a
//! new version: executions that started on an older one keep it (it was copied into their
//! request), and `?version=N` still shows it.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body::read_json, AppState, Principal};
use crate::domain::rfc3339;
use crate::error::{ApiError, ErrorCode};
use crate::store::{CatalogEntry, CatalogKind};
use crate::workflows::{valid_name, WorkflowDef};

/// Largest definition accepted (a schema or a workflow with its prompts).
const MAX_DEFINITION_BYTES: usize = 512 * 1024;

fn noun(kind: CatalogKind) -> &'static str {
    match kind {
        CatalogKind::Structure => "structure",
        CatalogKind::Workflow => "workflow",
    }
}

fn view(kind: CatalogKind, entry: &CatalogEntry) -> Value {
    let mut v = json!({
        "object": noun(kind),
        "name": entry.name,
        "version": entry.version,
        "description": entry.description,
        "source": if entry.from_config() { "config" } else { "api" },
        "created_at": rfc3339(entry.created_at_ms),
    });
    match kind {
        CatalogKind::Structure => v["schema"] = entry.body.clone(),
        CatalogKind::Workflow => v["definition"] = entry.body.clone(),
    }
    v
}

/// `POST /v1/structures` and `PUT /v1/structures/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StructureBody {
    #[serde(default)]
    name: Option<String>,
    schema: Value,
    #[serde(default)]
    description: Option<String>,
}

/// A checked definition: its name, body and description.
type Definition = (String, Value, Option<String>);

fn structure_definition(body: Value, path_name: Option<&str>) -> Result<Definition, ApiError> {
    let body: StructureBody = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("invalid structure: {e}")))?;
    let name = named(body.name, path_name)?;
    crate::structured::compile(&body.schema)
        .map_err(|e| ApiError::invalid(format!("schema: {e}")))?;
    Ok((name, body.schema, body.description))
}

fn workflow_definition(
    state: &AppState,
    project: &str,
    body: Value,
    path_name: Option<&str>,
) -> Result<Definition, ApiError> {
    let mut def: WorkflowDef = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("invalid workflow: {e}")))?;
    def.name = named(Some(def.name).filter(|n| !n.is_empty()), path_name)?;
    def.check().map_err(ApiError::invalid)?;
    for (_, slug) in def.model_refs() {
        if state.settings.model(slug).is_none() {
            return Err(ApiError::invalid(format!("model: unknown model `{slug}`")));
        }
    }
    for (_, name) in def.structure_refs() {
        let known = state
            .store
            .catalog_get(CatalogKind::Structure, project, name, None)?;
        if known.is_none() {
            return Err(ApiError::invalid(format!(
                "structure: unknown structure `{name}`"
            )));
        }
    }
    let description = def.description.clone();
    let name = def.name.clone();
    let body = serde_json::to_value(&def).map_err(ApiError::internal)?;
    Ok((name, body, description))
}

/// The definition's name: the path's (a body naming another is refused) or the body's.
fn named(body: Option<String>, path: Option<&str>) -> Result<String, ApiError> {
    let name = match (body, path) {
        (Some(b), Some(p)) if b != p => {
            return Err(ApiError::invalid(format!(
                "name: `{b}` differs from the name in the path (`{p}`)"
            )))
        }
        (_, Some(p)) => p.to_string(),
        (Some(b), None) => b,
        (None, None) => return Err(ApiError::invalid("name: required")),
    };
    if !valid_name(&name) {
        return Err(ApiError::invalid(
            "name: 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    Ok(name)
}

async fn write(
    state: &AppState,
    principal: &Principal,
    req: &HttpRequest,
    payload: web::Payload,
    kind: CatalogKind,
    path_name: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin()?;
    let body: Value = read_json(req, payload, MAX_DEFINITION_BYTES).await?;
    let project = &principal.project_id;
    let (name, body, description) = match kind {
        CatalogKind::Structure => structure_definition(body, path_name)?,
        CatalogKind::Workflow => workflow_definition(state, project, body, path_name)?,
    };
    let own = state.store.catalog_get(kind, project, &name, None)?;
    let exists = own.is_some_and(|e| !e.from_config());
    if path_name.is_none() && exists {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{} `{name}` exists; PUT /v1/{}s/{name} makes a new version",
                noun(kind),
                noun(kind)
            ),
        ));
    }
    let entry = state
        .store
        .catalog_put(kind, project, &name, body, description)?;
    state.durable().await?;
    tracing::info!(kind = noun(kind), name = %entry.name, version = entry.version, by = %principal.key_id, "definition stored");
    let status = if entry.version == 1 {
        actix_web::http::StatusCode::CREATED
    } else {
        actix_web::http::StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(view(kind, &entry)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    #[serde(default)]
    version: Option<u32>,
}

fn read(
    state: &AppState,
    principal: &Principal,
    kind: CatalogKind,
    name: &str,
    version: Option<u32>,
) -> Result<HttpResponse, ApiError> {
    let entry = state
        .store
        .catalog_get(kind, &principal.project_id, name, version)?
        .ok_or_else(|| {
            let which = version.map(|v| format!(" version {v}")).unwrap_or_default();
            ApiError::new(
                ErrorCode::NotFound,
                format!("no {} `{name}`{which}", noun(kind)),
            )
        })?;
    Ok(HttpResponse::Ok().json(view(kind, &entry)))
}

fn list(
    state: &AppState,
    principal: &Principal,
    kind: CatalogKind,
) -> Result<HttpResponse, ApiError> {
    let entries = state.store.catalog_list(kind, &principal.project_id)?;
    let data: Vec<Value> = entries.iter().map(|e| view(kind, e)).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// Which catalog a route serves: [`STRUCTURES`] or [`WORKFLOWS`] (one set of handlers for
/// both, chosen where the routes are registered).
pub const STRUCTURES: u8 = 0;
pub const WORKFLOWS: u8 = 1;

const fn kind<const K: u8>() -> CatalogKind {
    match K {
        STRUCTURES => CatalogKind::Structure,
        _ => CatalogKind::Workflow,
    }
}

/// `POST /v1/{structures,workflows}`: a new definition.
pub async fn create<const K: u8>(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    write(&state, &principal, &req, payload, kind::<K>(), None).await
}

/// `PUT /v1/{structures,workflows}/{name}`: a new version.
pub async fn replace<const K: u8>(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    write(&state, &principal, &req, payload, kind::<K>(), Some(&name)).await
}

/// `GET /v1/{structures,workflows}/{name}[?version=N]`.
pub async fn get<const K: u8>(
    state: web::Data<AppState>,
    principal: Principal,
    name: web::Path<String>,
    query: web::Query<VersionQuery>,
) -> Result<HttpResponse, ApiError> {
    read(&state, &principal, kind::<K>(), &name, query.version)
}

/// `GET /v1/{structures,workflows}`: the newest version of each.
pub async fn list_all<const K: u8>(
    state: web::Data<AppState>,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    list(&state, &principal, kind::<K>())
}
