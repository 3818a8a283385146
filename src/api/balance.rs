//! Balances: the hold a submit places (`crate::ledger`), `POST /v1/projects/{id}/balance`
//! (top up: admins of that project or of `default`), `GET /v1/balance` and `GET /v1/ledger`
//! (any key of the project; admins of `default` may name another with `?project_id=`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{auth::DEFAULT_PROJECT, body::read_json, keys::valid_project_id, AppState, Principal};
use crate::domain::{rfc3339, SubmitBody};
use crate::error::{ApiError, ErrorCode};
use crate::ledger::pricing::{hold_for, Price};
use crate::ledger::{Reservation, ReserveError};
use crate::routing;
use crate::store::LedgerEntry;

/// The most one top-up may add: $1,000,000,000 (anything larger is a typo).
pub const MAX_TOP_UP_MICROS: u64 = 1_000_000_000 * 1_000_000;

/// What a submit of `body` to model `slug` may cost at most: its prompt (characters / 4) and
/// `max_tokens` (or the route's cap) on the most expensive route it may use.
pub fn worst_case_micros(
    state: &AppState,
    slug: &str,
    needs: &routing::Needs,
    body: &SubmitBody,
) -> u64 {
    let routes = routing::plan(&state.settings, &state.providers, slug).unwrap_or_default();
    routing::capable(routes, needs)
        .iter()
        .map(|r| {
            r.price
                .worst_case_micros(needs.approx_prompt_tokens, body.params.max_tokens)
        })
        .max()
        .unwrap_or(0)
}

/// Holds what the submit may cost against the project's balance and the key's monthly cap
/// (nothing when neither applies): `402 insufficient_balance` when it is not covered.
pub(super) fn reserve(
    state: &AppState,
    principal: &Principal,
    slug: &str,
    needs: &routing::Needs,
    body: &SubmitBody,
) -> Result<Option<Reservation>, ApiError> {
    let cap = state.limits.monthly_spend_cap(&principal.key_id);
    if cap.is_none() && !state.ledger.is_limited(&principal.project_id) {
        return Ok(None);
    }
    let amount = hold_for(worst_case_micros(state, slug, needs, body));
    reserve_amount(state, principal, cap, amount)
}

/// In a cluster: holds what the submit may cost against the project's shared balance and the
/// key's monthly cap, for execution `id` (`None`: neither applies). Exact across nodes (see
/// `cluster::ledger`); `402 insufficient_balance` when it is not covered.
pub(super) async fn hold_shared(
    state: &AppState,
    cluster: &crate::cluster::Cluster,
    principal: &Principal,
    (slug, needs, body): (&str, &routing::Needs, &SubmitBody),
    id: &str,
) -> Result<Option<u64>, ApiError> {
    let amount = hold_for(worst_case_micros(state, slug, needs, body));
    let cap = state.limits.monthly_spend_cap(&principal.key_id);
    match cluster
        .hold_spend(&principal.project_id, &principal.key_id, id, amount, cap)
        .await
        .map_err(ApiError::cluster_unavailable)?
    {
        Ok(true) => Ok(Some(amount)),
        Ok(false) => Ok(None),
        Err(refusal) => {
            state.metrics.insufficient_balance.inc();
            Err(ApiError::new(
                ErrorCode::InsufficientBalance,
                refusal.message(),
            ))
        }
    }
}

/// [`reserve`] for a request whose worst case is already known (embeddings).
pub(super) fn reserve_amount(
    state: &AppState,
    principal: &Principal,
    cap: Option<u64>,
    amount: u64,
) -> Result<Option<Reservation>, ApiError> {
    match state
        .ledger
        .reserve(&principal.project_id, &principal.key_id, cap, amount)
    {
        Ok(r) => Ok(r),
        Err(ReserveError::Refused(refusal)) => {
            state.metrics.insufficient_balance.inc();
            Err(ApiError::new(
                ErrorCode::InsufficientBalance,
                refusal.message(),
            ))
        }
        Err(ReserveError::Store(e)) => Err(e.into()),
    }
}

/// The worst case of an embeddings request: its input tokens at the dearest route's input
/// price.
pub fn embedding_worst_case(prices: impl Iterator<Item = Price>, input_tokens: u64) -> u64 {
    prices
        .map(|p| p.cost_micros(input_tokens, 0))
        .max()
        .unwrap_or(0)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    amount_micros: Value,
}

/// The project a balance request is about: the caller's, or (admins of `default`) the one
/// named. A project the caller may not see answers 404, as an unknown one would.
pub(super) fn project_of(principal: &Principal, named: Option<&str>) -> Result<String, ApiError> {
    let Some(project) = named else {
        return Ok(principal.project_id.clone());
    };
    if !valid_project_id(project) {
        return Err(ApiError::invalid(
            "project_id: 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    if project != principal.project_id && principal.project_id != DEFAULT_PROJECT {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no project `{project}`"),
        ));
    }
    Ok(project.to_string())
}

/// The project's balance; in a cluster read from the shared ledger (exact, not the mirror).
async fn balance_view(state: &AppState, project: &str) -> Result<Value, ApiError> {
    if let Some(cluster) = &state.cluster {
        let (last, _) = cluster
            .account(project)
            .await
            .map_err(ApiError::cluster_unavailable)?;
        if let Some(last) = last {
            state.ledger.apply_shared(project, &last);
        }
    }
    Ok(match state.ledger.balance(project) {
        Some(b) => json!({
            "object": "balance",
            "project_id": project,
            "unlimited": false,
            "balance_micros": b.balance_micros,
            "held_micros": b.held_micros,
            "available_micros": b.available_micros,
        }),
        None => json!({
            "object": "balance",
            "project_id": project,
            "unlimited": true,
            "balance_micros": null,
            "held_micros": 0,
            "available_micros": null,
        }),
    })
}

pub async fn top_up(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let project = project_of(&principal, Some(&path.into_inner()))?;
    principal.require_admin()?;
    let body: TopUp = read_json(&req, payload, 4 * 1024).await?;
    let amount = body
        .amount_micros
        .as_u64()
        .filter(|&a| a <= MAX_TOP_UP_MICROS)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "amount_micros: must be a whole number of micro-dollars from 0 to {MAX_TOP_UP_MICROS}"
            ))
        })?;
    state.store.health.admit()?;
    let topped = match &state.cluster {
        Some(cluster) => cluster
            .top_up(&project, &principal.key_id, amount)
            .await
            .map_err(ApiError::cluster_unavailable)?
            .map(|entry| state.ledger.apply_shared(&project, &entry)),
        None => state
            .ledger
            .top_up(&project, &principal.key_id, amount)?
            .map(|_| ()),
    };
    if topped.is_none() {
        return Err(ApiError::invalid(
            "amount_micros: the balance would overflow",
        ));
    }
    state.durable().await?;
    tracing::info!(project = %project, amount_micros = amount, key_id = %principal.key_id, "balance topped up");
    Ok(HttpResponse::Ok().json(balance_view(&state, &project).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Which {
    project_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<Which>,
) -> Result<HttpResponse, ApiError> {
    let project = project_of(&principal, query.project_id.as_deref())?;
    Ok(HttpResponse::Ok().json(balance_view(&state, &project).await?))
}

fn entry_view(e: &LedgerEntry) -> Value {
    json!({
        "seq": e.seq,
        "kind": e.kind,
        "amount_micros": e.amount_micros,
        "execution_id": e.execution_id,
        "key_id": e.key_id,
        "hold_micros": e.hold_micros,
        "uncollected_micros": e.uncollected_micros,
        "balance_micros": e.balance_micros,
        "held_micros": e.held_micros,
        "at": rfc3339(e.at_ms),
    })
}

/// The project's ledger, oldest first; `cursor` is the `seq` of the last entry seen.
pub async fn ledger(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<Which>,
) -> Result<HttpResponse, ApiError> {
    let project = project_of(&principal, query.project_id.as_deref())?;
    let limit = super::paging::limit(query.limit.as_deref())?;
    let after = match query.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::invalid("cursor: must be the next_cursor of an earlier page")
        })?),
    };
    let (entries, more) = state.store.ledger_page(&project, after, limit)?;
    let data: Vec<Value> = entries.iter().map(entry_view).collect();
    let next = more
        .then(|| entries.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(super::paging::list(&data, next.as_deref()))
}
