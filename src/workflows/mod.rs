//! Workflows: a named model + system prompt + output structure (+ params, webhook), and
//! optionally a chain of steps, each with its own model, prompt and structure, whose templates
//! read the variables given at submit and the outputs of earlier steps
//! (`{{steps.classify.data.intent}}`). All steps run inside one execution and its one event log.

pub mod templates;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{Message, Params, Role};

pub use crate::domain::ids::valid_name;

/// A workflow definition, as written in `[[workflows]]` or sent to `/v1/workflows`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDef {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The model slug (the default of every step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A system prompt template, put before the submitted messages (of every step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The structure the answer (of a workflow without steps) must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structure: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub params: Params,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepDef>,
}

fn is_default(p: &Params) -> bool {
    *p == Params::default()
}

/// One step of a workflow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    pub name: String,
    /// Defaults to the workflow's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A user-turn template appended after the submitted messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Params>,
}

/// A named definition's name and the version an execution uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRef {
    pub name: String,
    pub version: u32,
}

/// A step as an execution runs it: everything resolved at submit (model slug, structure
/// version, params) except its templates, which need the earlier steps' outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPlan {
    pub name: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub params: Params,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structure: Option<VersionRef>,
}

/// A finished step's output, as the record and the step's `step` event carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub model: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::domain::Usage>,
}

impl WorkflowDef {
    /// Checks what can be checked without the catalog: names, and that every template parses
    /// and reads only earlier steps. Errors name the field.
    pub fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() && self.model.is_none() {
            return Err("model: a workflow without steps needs a model".into());
        }
        if let Some(system) = &self.system {
            templates::check_steps(system, &[]).map_err(|e| format!("system: {e}"))?;
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            if step.name.is_empty() || seen.contains(&step.name.as_str()) {
                return Err(format!("steps[{i}].name: must be set and unique"));
            }
            if step.model.is_none() && self.model.is_none() {
                return Err(format!(
                    "steps[{i}].model: needed (the workflow names none)"
                ));
            }
            if let Some(prompt) = &step.prompt {
                templates::check_steps(prompt, &seen)
                    .map_err(|e| format!("steps[{i}].prompt: {e}"))?;
            }
            seen.push(&step.name);
        }
        Ok(())
    }

    /// The model slugs the workflow names, each with the field that names it.
    pub fn model_refs(&self) -> Vec<(String, &str)> {
        self.refs(self.model.as_deref(), "model", |s| s.model.as_deref())
    }

    /// The structures the workflow names, each with the field that names it.
    pub fn structure_refs(&self) -> Vec<(String, &str)> {
        self.refs(self.structure.as_deref(), "structure", |s| {
            s.structure.as_deref()
        })
    }

    fn refs<'a>(
        &'a self,
        own: Option<&'a str>,
        field: &str,
        of_step: impl Fn(&'a StepDef) -> Option<&'a str>,
    ) -> Vec<(String, &'a str)> {
        let steps = self.steps.iter().enumerate();
        own.map(|name| (field.to_string(), name))
            .into_iter()
            .chain(steps.filter_map(|(j, step)| {
                of_step(step).map(|name| (format!("steps[{j}].{field}"), name))
            }))
            .collect()
    }

    /// Every variable (not `steps`) the workflow's templates read, with where.
    pub fn variables_used(&self) -> Vec<(String, String)> {
        let mut used = Vec::new();
        if let Some(system) = &self.system {
            for v in templates::variables(system) {
                used.push((v, "system".to_string()));
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            if let Some(prompt) = &step.prompt {
                for v in templates::variables(prompt) {
                    used.push((v, format!("steps[{i}].prompt")));
                }
            }
        }
        used
    }
}

/// The conversation one step sends: the system template, the submitted messages, the step's
/// prompt; rendered over the variables and the outputs of the steps before it.
pub fn step_messages(
    plan: &StepPlan,
    submitted: &[Message],
    variables: &Map<String, Value>,
    done: &[StepResult],
) -> Result<Vec<Message>, String> {
    let context = templates::context(variables, done);
    let mut messages = Vec::with_capacity(submitted.len() + 2);
    if let Some(system) = &plan.system {
        messages.push(Message::new(
            Role::System,
            templates::render(system, &context)?,
        ));
    }
    messages.extend_from_slice(submitted);
    if let Some(prompt) = &plan.prompt {
        messages.push(Message::new(
            Role::User,
            templates::render(prompt, &context)?,
        ));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(v: Value) -> WorkflowDef {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn steps_read_only_earlier_steps() {
        let ok = def(json!({"name": "w", "model": "m", "steps": [
            {"name": "classify", "prompt": "Classify {{text}}"},
            {"name": "reply", "prompt": "Intent: {{steps.classify.data.intent}}"}]}));
        ok.check().unwrap();
        assert_eq!(
            ok.variables_used(),
            vec![("text".into(), "steps[0].prompt".into())]
        );
        let later = def(json!({"name": "w", "model": "m", "steps": [
            {"name": "a", "prompt": "{{steps.b.text}}"}, {"name": "b"}]}));
        assert!(later.check().unwrap_err().starts_with("steps[0].prompt"));
        let twice =
            def(json!({"name": "w", "model": "m", "steps": [{"name": "a"}, {"name": "a"}]}));
        assert!(twice.check().unwrap_err().starts_with("steps[1].name"));
        assert!(def(json!({"name": "w"}))
            .check()
            .unwrap_err()
            .starts_with("model"));
        let broken = def(json!({"name": "w", "model": "m", "system": "{{ oops"}));
        assert!(broken.check().unwrap_err().starts_with("system"));
    }

    #[test]
    fn a_step_sees_the_variables_and_the_earlier_outputs() {
        let plan = StepPlan {
            name: "reply".into(),
            model: "m".into(),
            system: Some("You answer about {{topic}}.".into()),
            prompt: Some("The intent is {{steps.classify.data.intent}}.".into()),
            params: Params::default(),
            structure: None,
        };
        let done = vec![StepResult {
            name: "classify".into(),
            model: "m".into(),
            text: r#"{"intent":"refund"}"#.into(),
            data: Some(json!({"intent": "refund"})),
            usage: None,
        }];
        let vars = json!({"topic": "orders"}).as_object().unwrap().clone();
        let user = Message::new(Role::User, "hi");
        let messages = step_messages(&plan, &[user], &vars, &done).unwrap();
        let texts: Vec<_> = messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            texts,
            ["You answer about orders.", "hi", "The intent is refund."]
        );
        let missing = step_messages(&plan, &[], &vars, &[]);
        assert!(missing.is_err(), "strict: an unknown value is an error");
    }
}
