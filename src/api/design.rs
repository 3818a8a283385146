//! What a submit asks beyond a model and messages — its mode, a named structure, a workflow —
//! resolved against the catalog into the request the execution stores and runs. Every
//! definition is copied into the stored request at its current version, so a definition
//! replaced while an execution runs (or after a crash, while it resumes) does not change it.

use serde_json::{json, Map, Value};

use super::{AppState, Principal};
use crate::domain::{ChatRequest, Design, Message, Mode, Params, Role, SubmitBody};
use crate::error::{ApiError, ErrorCode};
use crate::store::CatalogKind;
use crate::structured;
use crate::workflows::{templates, StepPlan, VersionRef, WorkflowDef};

/// A submit resolved: the model slug to admit, the request to store, the record's design.
pub struct Resolved {
    pub model: String,
    pub request: ChatRequest,
    pub design: Design,
    pub webhook_url: Option<String>,
}

pub fn resolve(
    state: &AppState,
    principal: &Principal,
    body: &SubmitBody,
) -> Result<Resolved, ApiError> {
    let mode = match (body.mode, principal.test_only) {
        (Some(Mode::Live), true) => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "mode: this is a test key; it runs testing executions only",
            ))
        }
        (Some(mode), _) => mode,
        (None, true) => Mode::Testing,
        (None, false) => Mode::Live,
    };
    if body.simulate.is_some() && mode != Mode::Testing {
        return Err(ApiError::invalid(
            "simulate: only in testing mode (\"mode\": \"testing\")",
        ));
    }
    let mut resolved = Resolved {
        model: body.model.clone(),
        request: body.chat_request(),
        design: Design {
            mode,
            ..Design::default()
        },
        webhook_url: body.webhook_url.clone(),
    };
    let project = &principal.project_id;
    if let Some(name) = &body.structure {
        if body.params.response_format.is_some() {
            return Err(ApiError::invalid(
                "structure: give either `structure` or `params.response_format`, not both",
            ));
        }
        let (format, version) = structure_format(state, project, name, "structure")?;
        resolved.request.params.response_format = Some(format);
        resolved.design.structure = Some(version);
    }
    if let Some(name) = &body.workflow {
        apply_workflow(state, project, body, name, &mut resolved)?;
    }
    check_format(&resolved.request.params, "params.response_format")?;
    Ok(resolved)
}

/// A named structure as a `json_schema` response format, at its newest version.
fn structure_format(
    state: &AppState,
    project: &str,
    name: &str,
    field: &str,
) -> Result<(Value, VersionRef), ApiError> {
    let entry = state
        .store
        .catalog_get(CatalogKind::Structure, project, name, None)?
        .ok_or_else(|| ApiError::invalid(format!("{field}: unknown structure `{name}`")))?;
    let format = json!({"type": "json_schema", "json_schema": {
        "name": entry.name, "schema": entry.body, "strict": true}});
    let version = VersionRef {
        name: entry.name,
        version: entry.version,
    };
    Ok((format, version))
}

/// Refuses a `json_schema` format whose schema does not compile, naming where.
pub fn check_format(params: &Params, field: &str) -> Result<(), ApiError> {
    let Some(schema) = params
        .response_format
        .as_ref()
        .and_then(structured::format_schema)
    else {
        return Ok(());
    };
    structured::compile(schema)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(format!("{field}.json_schema.schema: {e}")))
}

fn apply_workflow(
    state: &AppState,
    project: &str,
    body: &SubmitBody,
    name: &str,
    resolved: &mut Resolved,
) -> Result<(), ApiError> {
    if !body.model.is_empty() {
        return Err(ApiError::invalid(format!(
            "model: leave it out; workflow `{name}` names its model"
        )));
    }
    let entry = state
        .store
        .catalog_get(CatalogKind::Workflow, project, name, None)?
        .ok_or_else(|| ApiError::invalid(format!("workflow: unknown workflow `{name}`")))?;
    let def: WorkflowDef = serde_json::from_value(entry.body.clone())
        .map_err(|e| ApiError::internal(format!("stored workflow `{name}` unreadable: {e}")))?;
    let missing: Vec<String> = def
        .variables_used()
        .into_iter()
        .filter(|(v, _)| !body.variables.contains_key(v))
        .map(|(v, at)| format!("`{v}` (used by {at})"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::invalid(format!(
            "variables: missing {} for workflow `{name}`",
            missing.join(", ")
        )));
    }
    resolved.design.workflow = Some(VersionRef {
        name: entry.name,
        version: entry.version,
    });
    if resolved.webhook_url.is_none() {
        resolved.webhook_url = def.webhook_url.clone();
    }
    let request = &mut resolved.request;
    if def.steps.is_empty() {
        resolved.model = def.model.clone().unwrap_or_default();
        if let Some(system) = &def.system {
            let text = templates::render(system, &Value::Object(body.variables.clone()))
                .map_err(|e| ApiError::invalid(format!("workflow `{name}` system: {e}")))?;
            request.messages.insert(0, Message::new(Role::System, text));
        }
        request.params = merged(&def.params, None, &body.params, "workflow params")?;
        if body.structure.is_none() {
            if let Some(structure) = &def.structure {
                let field = format!("workflow `{name}` structure");
                let (format, version) = structure_format(state, project, structure, &field)?;
                request.params.response_format = Some(format);
                resolved.design.structure = Some(version);
            }
        }
        return Ok(());
    }
    let last = def.steps.len() - 1;
    for (i, step) in def.steps.iter().enumerate() {
        let model = step.model.clone().or(def.model.clone()).unwrap_or_default();
        if state.settings.model(&model).is_none() {
            return Err(ApiError::invalid(format!(
                "workflow `{name}` step `{}`: unknown model `{model}`",
                step.name
            )));
        }
        let mut params = merged(
            &def.params,
            step.params.as_ref(),
            &body.params,
            "step params",
        )?;
        // The workflow's structure shapes the final answer: its last step's, unless the step
        // has its own (a submit's `structure` overrides it the same way).
        let structure = match (&body.structure, &step.structure) {
            (Some(_), None) if i == last => body.structure.as_ref(),
            (_, Some(own)) => Some(own),
            (None, None) if i == last => def.structure.as_ref(),
            _ => None,
        };
        let mut version = None;
        if let Some(structure) = structure {
            let field = format!("workflow `{name}` step `{}` structure", step.name);
            let (format, v) = structure_format(state, project, structure, &field)?;
            params.response_format = Some(format);
            version = Some(v);
        }
        request.steps.push(StepPlan {
            name: step.name.clone(),
            model,
            system: def.system.clone(),
            prompt: step.prompt.clone(),
            params,
            structure: version,
        });
    }
    resolved.model = request.steps[0].model.clone();
    resolved.design.structure = request.steps[last].structure.clone();
    request.variables = body.variables.clone();
    Ok(())
}

/// Params layered: the workflow's, a step's over them, the submit's over both (each field set
/// at a later layer wins).
fn merged(
    workflow: &Params,
    step: Option<&Params>,
    submit: &Params,
    what: &str,
) -> Result<Params, ApiError> {
    let mut out = Map::new();
    for layer in [Some(workflow), step, Some(submit)].into_iter().flatten() {
        if let Value::Object(fields) = serde_json::to_value(layer).unwrap_or_default() {
            out.extend(fields);
        }
    }
    serde_json::from_value(Value::Object(out))
        .map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_field_by_field() {
        let workflow = Params {
            temperature: Some(0.1),
            max_tokens: Some(100),
            ..Params::default()
        };
        let step = Params {
            max_tokens: Some(50),
            ..Params::default()
        };
        let submit = Params {
            temperature: Some(0.9),
            ..Params::default()
        };
        let p = merged(&workflow, Some(&step), &submit, "x").unwrap();
        assert_eq!((p.temperature, p.max_tokens), (Some(0.9), Some(50)));
    }
}
