//! CEL validation rules of custom resources (`x-kubernetes-validations`), as upstream evaluates
//! them: each rule runs with `self` bound to the value of the schema node that carries it; a rule
//! that mentions `oldSelf` is a transition rule, run only on an update whose old object has a
//! value there, with `oldSelf` bound to it. A rule that does not hold is a field error with its
//! `message` (or `messageExpression`, or `failed rule: RULE`), `reason` and `fieldPath`.
//! Programs are compiled once per rule text and kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// How many compiled rules are kept (a CRD has a handful; the cache is dropped when full).
const CACHE_SIZE: usize = 4096;

/// A compiled rule and whether it reads `oldSelf`.
struct Compiled {
    program: cel::Program,
    transition: bool,
}

fn cache() -> &'static Mutex<HashMap<String, Arc<Compiled>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Compiled>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The longest rule accepted, in bytes.
const MAX_RULE: usize = 4096;
/// The deepest nesting of brackets in a rule.
const MAX_NESTING: usize = 32;
/// The most operators a rule may have.
const MAX_OPERATORS: usize = 256;
/// The stack the parser and interpreter run on: both recurse along the expression's depth, which
/// the limits above bound.
const STACK: usize = 64 << 20;

std::thread_local! {
    /// Set on the threads [`on_big_stack`] makes, so that nested calls run in place.
    static BIG_STACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on a thread with a stack of [`STACK`] bytes (in place when already on one): a whole
/// object's validation runs there once, rather than a thread per rule.
pub fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if BIG_STACK.with(std::cell::Cell::get) {
        return f();
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("cel".into())
            .stack_size(STACK)
            .spawn_scoped(scope, || {
                BIG_STACK.with(|b| b.set(true));
                f()
            })
            .map(|t| t.join())
    })
    .unwrap_or_else(|e| std::panic::resume_unwind(Box::new(e.to_string())))
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Why `source` is too large to compile safely, if it is: upstream refuses rules whose estimated
/// cost is too high; these limits keep parsing and evaluation within a bounded stack.
fn too_complex(source: &str) -> Option<String> {
    if source.len() > MAX_RULE {
        return Some(format!("must be at most {MAX_RULE} bytes"));
    }
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    for c in source.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '+' | '-' | '*' | '/' | '%' | '&' | '|' | '=' | '!' | '<' | '>' | '?' | ':' | '.' | ',' => {
                operators += 1
            }
            _ => {}
        }
    }
    if deepest > MAX_NESTING {
        return Some(format!("nests more than {MAX_NESTING} levels of brackets"));
    }
    (operators > MAX_OPERATORS).then(|| format!("has more than {MAX_OPERATORS} operators"))
}

/// Compiles `source`, or says why it does not compile.
fn compile(source: &str) -> Result<Arc<Compiled>, String> {
    if let Some(c) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(source) {
        return Ok(c.clone());
    }
    if let Some(why) = too_complex(source) {
        return Err(format!("the rule is too complex: it {why}"));
    }
    let program =
        on_big_stack(|| cel::Program::compile(source).map_err(|e| e.to_string().trim().to_owned()))?;
    let transition = program.references().has_variable("oldSelf");
    let compiled = Arc::new(Compiled { program, transition });
    let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= CACHE_SIZE {
        cache.clear();
    }
    cache.insert(source.to_owned(), compiled.clone());
    Ok(compiled)
}

/// Why a CRD's rule (`rule` and `messageExpression`) is refused, if it is.
pub fn check_rule(rule: &Value) -> Option<String> {
    let source = rule["rule"].as_str().unwrap_or_default();
    if source.trim().is_empty() {
        return Some("Required value: rule is not specified".to_owned());
    }
    if let Err(e) = compile(source) {
        return Some(format!("Invalid value: \"{source}\": compilation failed: {e}"));
    }
    if let Some(expr) = rule["messageExpression"].as_str()
        && let Err(e) = compile(expr)
    {
        return Some(format!(
            "Invalid value: \"{expr}\": messageExpression compilation failed: {e}"
        ));
    }
    None
}

/// A JSON value as CEL sees it: integers as `int`, other numbers as `double`, objects as maps.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let entries: HashMap<String, cel::Value> =
                map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(entries)
        }
    }
}

/// What a program evaluated to, as plain data.
enum Outcome {
    Bool(bool),
    Text(String),
    Other(String),
}

fn run(compiled: &Compiled, value: &Value, old: Option<&Value>) -> Result<Outcome, String> {
    on_big_stack(|| {
        let mut context = cel::Context::default();
        context.add_variable_from_value("self", to_cel(value));
        if let Some(old) = old {
            context.add_variable_from_value("oldSelf", to_cel(old));
        }
        match compiled.program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(Outcome::Bool(b)),
            Ok(cel::Value::String(s)) => Ok(Outcome::Text(s.as_str().to_owned())),
            Ok(other) => Ok(Outcome::Other(format!("{other:?}"))),
            Err(e) => Err(e.to_string()),
        }
    })
}

/// The schema type named in error messages, as upstream shows it (`Invalid value: "object"`).
fn shown_type(schema: &Value, value: &Value) -> String {
    match schema["type"].as_str() {
        Some(t) => t.to_owned(),
        None => match value {
            Value::Object(_) => "object",
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Null => "null",
        }
        .to_owned(),
    }
}

/// Runs the rules of the schema node `schema` on `value` (at `path`; `old` its value in the
/// object being replaced); returns the field errors.
pub fn validate(schema: &Value, value: &Value, old: Option<&Value>, path: &str) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let source = rule["rule"].as_str().unwrap_or_default();
        let compiled = match compile(source) {
            Ok(c) => c,
            Err(e) => {
                causes.push((
                    path.to_owned(),
                    format!("Invalid value: \"{source}\": compilation failed: {e}"),
                ));
                continue;
            }
        };
        if compiled.transition && old.is_none() {
            continue;
        }
        let old = old.filter(|_| compiled.transition);
        let failure = match run(&compiled, value, old) {
            Ok(Outcome::Bool(true)) => continue,
            Ok(Outcome::Bool(false)) => {
                let from_expression = rule["messageExpression"]
                    .as_str()
                    .and_then(|e| compile(e).ok())
                    .and_then(|c| match run(&c, value, old) {
                        Ok(Outcome::Text(s)) if !s.trim().is_empty() => Some(s),
                        _ => None,
                    });
                from_expression
                    .or_else(|| rule["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("failed rule: {source}"))
            }
            Ok(Outcome::Text(other) | Outcome::Other(other)) => {
                format!("rule did not evaluate to a bool: {other}")
            }
            Err(e) => format!("{e} evaluating rule: {source}"),
        };
        let field = match rule["fieldPath"].as_str().filter(|f| !f.is_empty()) {
            Some(f) if path.is_empty() => f.trim_start_matches('.').to_owned(),
            Some(f) => format!("{path}{f}"),
            None => path.to_owned(),
        };
        let detail = match rule["reason"].as_str().unwrap_or("FieldValueInvalid") {
            "FieldValueRequired" => format!("Required value: {failure}"),
            "FieldValueForbidden" => format!("Forbidden: {failure}"),
            "FieldValueDuplicate" => format!("Duplicate value: {failure}"),
            _ => format!("Invalid value: \"{}\": {failure}", shown_type(schema, value)),
        };
        causes.push((field, detail));
    }
    causes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rules_hold_or_say_why_with_their_messages_reasons_and_paths() {
        let schema = json!({"type": "object", "x-kubernetes-validations": [
            {"rule": "self.minReplicas <= self.replicas", "message": "replicas must be at least minReplicas"},
            {"rule": "size(self.name) < 10 && self.name.startsWith('w')"},
            {"rule": "!has(self.forbidden)", "reason": "FieldValueForbidden", "fieldPath": ".forbidden",
             "messageExpression": "'forbidden is set to ' + string(self.forbidden)"},
            {"rule": "self.all(k, k != 'evil')"},
        ]});
        let good = json!({"replicas": 3, "minReplicas": 1, "name": "web"});
        assert!(validate(&schema, &good, None, "spec").is_empty());
        let bad = json!({"replicas": 1, "minReplicas": 2, "name": "database", "forbidden": 7, "evil": true});
        assert_eq!(
            validate(&schema, &bad, None, "spec"),
            [
                ("spec".to_owned(), "Invalid value: \"object\": replicas must be at least minReplicas".to_owned()),
                (
                    "spec".to_owned(),
                    "Invalid value: \"object\": failed rule: size(self.name) < 10 && self.name.startsWith('w')"
                        .to_owned()
                ),
                ("spec.forbidden".to_owned(), "Forbidden: forbidden is set to 7".to_owned()),
                ("spec".to_owned(), "Invalid value: \"object\": failed rule: self.all(k, k != 'evil')".to_owned()),
            ]
        );
    }

    #[test]
    fn transition_rules_run_only_on_updates() {
        let schema = json!({"type": "string", "x-kubernetes-validations": [
            {"rule": "self == oldSelf", "message": "Value is immutable"}]});
        assert!(validate(&schema, &json!("a"), None, "spec.id").is_empty());
        assert!(validate(&schema, &json!("a"), Some(&json!("a")), "spec.id").is_empty());
        assert_eq!(
            validate(&schema, &json!("b"), Some(&json!("a")), "spec.id"),
            [(
                "spec.id".to_owned(),
                "Invalid value: \"string\": Value is immutable".to_owned()
            )]
        );
    }

    #[test]
    fn rules_that_do_not_compile_are_refused() {
        assert!(
            check_rule(&json!({"rule": "self.replicas >"})).is_some_and(|e| e.contains("compilation failed"))
        );
        // Deep or long expressions are refused before the parser sees them; up to the limits
        // they compile and run (the parser and interpreter recurse along their depth).
        let deep = format!("{}1{} == 1", "(".repeat(33), ")".repeat(33));
        assert!(check_rule(&json!({"rule": deep})).is_some_and(|e| e.contains("too complex")));
        let long = format!("1{} == 1", "+1".repeat(300));
        assert!(check_rule(&json!({"rule": long})).is_some_and(|e| e.contains("too complex")));
        let nested = format!("{}self.a{} == 1", "(".repeat(32), ")".repeat(32));
        assert_eq!(check_rule(&json!({"rule": nested.clone()})), None);
        let chain = format!("0{} == 250", "+1".repeat(250));
        let schema = json!({"x-kubernetes-validations": [{"rule": nested}, {"rule": chain}]});
        assert!(validate(&schema, &json!({"a": 1}), None, "").is_empty());
        assert!(check_rule(&json!({"rule": ""})).is_some());
        assert_eq!(
            check_rule(&json!({"rule": "self.a == 1", "messageExpression": "'x'"})),
            None
        );
    }
}
