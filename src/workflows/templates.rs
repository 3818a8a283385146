//! Prompt templates (Jinja syntax, by minijinja): strict, so a value that is not there is an
//! error rather than an empty string silently sent to a model.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use super::StepResult;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Prompts are not HTML: nothing is escaped.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// The top-level names a template reads, other than `steps`.
pub fn variables(source: &str) -> Vec<String> {
    let env = environment();
    let Ok(template) = env.template_from_str(source) else {
        return Vec::new();
    };
    let mut names: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| v != "steps")
        .collect();
    names.sort();
    names
}

/// Checks that a template parses and reads only the steps in `earlier`.
pub fn check_steps(source: &str, earlier: &[&str]) -> Result<(), String> {
    let env = environment();
    let template = env
        .template_from_str(source)
        .map_err(|e| format!("template does not parse: {e}"))?;
    for path in template.undeclared_variables(true) {
        let mut parts = path.split('.');
        if parts.next() != Some("steps") {
            continue;
        }
        match parts.next() {
            Some(step) if earlier.contains(&step) => {}
            Some(step) => {
                return Err(format!(
                    "reads `steps.{step}`, which is not an earlier step"
                ))
            }
            None => {}
        }
    }
    Ok(())
}

/// What templates see: the variables, and `steps.<name>.{text, data}` of finished steps.
pub fn context(variables: &Map<String, Value>, done: &[StepResult]) -> Value {
    let mut context = variables.clone();
    if !done.is_empty() {
        let steps: Map<String, Value> = done
            .iter()
            .map(|s| {
                let mut out = Map::new();
                out.insert("text".into(), Value::String(s.text.clone()));
                out.insert("data".into(), s.data.clone().unwrap_or(Value::Null));
                (s.name.clone(), Value::Object(out))
            })
            .collect();
        context.insert("steps".into(), Value::Object(steps));
    }
    Value::Object(context)
}

pub fn render(source: &str, context: &Value) -> Result<String, String> {
    environment()
        .render_str(
            source,
            minijinja::Value::from(minijinja::value::Serde(context)),
        )
        .map_err(|e| format!("template: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_rendering_and_variable_lists() {
        let ctx = json!({"name": "Ada", "tags": ["a", "b"]});
        assert_eq!(
            render("Hi {{name}} {{tags|join(',')}}", &ctx).unwrap(),
            "Hi Ada a,b"
        );
        assert_eq!(
            render("<{{name}}>", &ctx).unwrap(),
            "<Ada>",
            "nothing escaped"
        );
        assert!(render("Hi {{nobody}}", &ctx).is_err());
        assert_eq!(
            variables("{{a}} {{steps.x.text}} {% if b %}{{c.d}}{% endif %}"),
            ["a", "b", "c"]
        );
        assert!(check_steps("{{steps.x.data.y}}", &["x"]).is_ok());
        assert!(check_steps("{{steps.y.text}}", &["x"]).is_err());
    }
}
