//! Structured output and tool calling: `response_format` and `tools` of a request, read into
//! a [`Grammar`] the engine constrains the answer with, and the answer read back into
//! `tool_calls`.
//!
//! A model whose chat template renders tools gets them through its template and calls them
//! in its own format ([`ToolFormat`]: Hermes `<tool_call>` blocks for Qwen2.5 and its kin,
//! one JSON object of `name` and `parameters` for Llama 3.1/3.2). Other models get kiln's one
//! documented format: kiln describes the functions in the system message, and a call is the
//! answer `{"tool_calls": [{"name": NAME, "arguments": {...}}]}`. With `tool_choice`
//! `required` or a named function the answer is constrained to the format, the arguments to
//! the function's JSON schema (objects closed to their declared properties unless they allow
//! others, see [`closed`]), so it always parses and validates; with `auto` the model
//! chooses, and an answer in the format naming a listed function becomes the call.

use kiln_engine::Grammar;
use kiln_tokenizer::chat::{Message, ToolFormat};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::request::{lenient, typed_at, Lenient, ObjectOnly};

/// Most tools one request may list.
const MAX_TOOLS: usize = 128;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON schema of its arguments.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// Never: the tools are not shown.
    None,
    /// The model chooses between answering and calling.
    Auto,
    /// At least one call, to any tool.
    Required,
    /// A call to this function.
    Named(String),
}

/// The tools of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// The functions.
    pub list: Vec<Tool>,
    /// `tool_choice`.
    pub choice: ToolChoice,
    /// `parallel_tool_calls`: more than one call in an answer.
    pub parallel: bool,
    /// How the model's template takes tools and the model calls them (set once the model
    /// is known; [`ToolFormat::Generic`] until then).
    pub format: ToolFormat,
}

/// A call read from an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text.
    pub arguments: String,
}

/// `response_format` as a request sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "an object")]
pub struct ResponseFormatIn {
    #[serde(flatten)]
    _object: ObjectOnly,
    #[serde(rename = "type")]
    kind: Option<Lenient<String>>,
    json_schema: Option<Lenient<JsonSchemaIn>>,
    regex: Option<Lenient<String>>,
    grammar: Option<Lenient<String>>,
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "an object")]
struct JsonSchemaIn {
    #[serde(flatten)]
    _object: ObjectOnly,
    strict: Option<Lenient<bool>>,
    /// A JSON schema: an object or a boolean.
    schema: Option<Value>,
}

/// Reads `response_format`: `text`, `json_object`, `json_schema` (OpenAI's), and kiln's
/// `regex` (`{"type": "regex", "regex": "..."}`) and `grammar` (`{"type": "grammar",
/// "grammar": "..."}` in llguidance's Lark dialect).
pub fn response_format(f: Option<ResponseFormatIn>) -> Result<Option<Grammar>, ApiError> {
    let Some(f) = f else {
        return Ok(None);
    };
    let text = |k: &str, v: Option<Lenient<String>>| -> Result<String, ApiError> {
        lenient(v).ok_or_else(|| {
            ApiError::bad(
                &format!("response_format.{k}"),
                format!("`response_format.{k}` must be a string"),
            )
        })
    };
    match lenient(f.kind).as_deref() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::JsonObject)),
        Some("json_schema") => {
            let js = lenient(f.json_schema).ok_or_else(|| {
                ApiError::bad(
                    "response_format.json_schema",
                    "`response_format.json_schema` must be an object with a `schema`",
                )
            })?;
            let strict = lenient(js.strict).unwrap_or(false);
            match js.schema {
                Some(mut s @ (Value::Object(_) | Value::Bool(_))) => {
                    if strict {
                        closed(&mut s);
                    }
                    Ok(Some(Grammar::JsonSchema(s)))
                }
                None | Some(Value::Null) => Ok(Some(Grammar::JsonObject)),
                Some(v) => Err(ApiError::bad(
                    "response_format.json_schema.schema",
                    format!("`response_format.json_schema.schema` must be a JSON schema object, got {v}"),
                )),
            }
        }
        Some("regex") => Ok(Some(Grammar::Regex(text("regex", f.regex)?))),
        Some("grammar") => Ok(Some(Grammar::Lark(text("grammar", f.grammar)?))),
        other => Err(ApiError::bad(
            "response_format.type",
            format!(
                "`response_format.type` is {other:?}; expected text, json_object, json_schema, regex or grammar"
            ),
        )),
    }
}

/// Closes every object of a schema that does not say otherwise to its declared properties
/// (`additionalProperties: false`), as OpenAI's strict mode requires of a schema: without
/// it a small model fills the answer with properties of its own invention.
pub fn closed(schema: &mut Value) {
    match schema {
        Value::Object(o) => {
            if o.contains_key("properties")
                || o.get("type").and_then(Value::as_str) == Some("object")
            {
                o.entry("additionalProperties").or_insert(json!(false));
            }
            for (k, v) in o.iter_mut() {
                // Values that are data, not schemas.
                if !matches!(k.as_str(), "enum" | "const" | "default" | "examples") {
                    closed(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(closed),
        _ => {}
    }
}

/// A tool as a request lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "an object")]
pub struct ToolIn {
    #[serde(flatten)]
    _object: ObjectOnly,
    #[serde(rename = "type")]
    kind: Option<Lenient<String>>,
    /// A [`FunctionIn`], read once it is known to be an object.
    function: Option<Value>,
}

/// A tool's function.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "an object")]
struct FunctionIn {
    #[serde(flatten)]
    _object: ObjectOnly,
    name: Option<Lenient<String>>,
    description: Option<Lenient<String>>,
    /// The JSON schema of its arguments.
    parameters: Option<Map<String, Value>>,
}

/// `tool_choice`: a mode, or `{"type": "function", "function": {"name": ...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolChoiceIn {
    /// `none`, `auto` or `required`.
    Mode(String),
    /// A function.
    Function {
        /// Read from an object only.
        #[serde(flatten)]
        _object: ObjectOnly,
        /// Its name.
        function: Option<Lenient<NamedIn>>,
    },
    /// Neither.
    Other(Value),
}

/// The function `tool_choice` names.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "an object")]
pub struct NamedIn {
    #[serde(flatten)]
    _object: ObjectOnly,
    name: Option<Lenient<String>>,
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls`.
pub fn parse(
    tools: Option<Vec<ToolIn>>,
    choice: Option<ToolChoiceIn>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, ApiError> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::bad(
            "tools",
            format!("{} tools, at most {MAX_TOOLS}", tools.len()),
        ));
    }
    let mut list: Vec<Tool> = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        let tool = one_tool(i, t)?;
        if list.iter().any(|o| o.name == tool.name) {
            return Err(ApiError::bad(
                &format!("tools[{i}].function.name"),
                format!("two tools are named `{}`", tool.name),
            ));
        }
        list.push(tool);
    }
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(ToolChoiceIn::Mode(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::bad(
                    "tool_choice",
                    format!(
                        "`tool_choice` is `{other}`; expected none, auto, required or a function"
                    ),
                ))
            }
        },
        Some(ToolChoiceIn::Function { function, .. }) => {
            let name = lenient(function)
                .and_then(|f| lenient(f.name))
                .ok_or_else(|| {
                    ApiError::bad(
                        "tool_choice.function.name",
                        "`tool_choice` names a function as {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !list.iter().any(|t| t.name == name) {
                return Err(ApiError::bad(
                    "tool_choice.function.name",
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                ));
            }
            ToolChoice::Named(name)
        }
        Some(ToolChoiceIn::Other(v)) => {
            return Err(ApiError::bad(
                "tool_choice",
                format!("`tool_choice` must be a string or an object, got {v}"),
            ))
        }
    };
    let parallel = parallel.unwrap_or(true);
    if list.is_empty() {
        if matches!(choice, ToolChoice::Required) {
            return Err(ApiError::bad(
                "tool_choice",
                "`tool_choice` is `required` but `tools` lists none",
            ));
        }
        return Ok(None);
    }
    Ok(Some(Tools {
        list,
        choice,
        parallel,
        format: ToolFormat::Generic,
    }))
}

fn one_tool(i: usize, t: ToolIn) -> Result<Tool, ApiError> {
    let at = |k: &str| format!("tools[{i}].{k}");
    if let Some(ty) = lenient(t.kind) {
        if ty != "function" {
            return Err(ApiError::bad(
                &at("type"),
                format!("tool type `{ty}` is not supported (function only)"),
            ));
        }
    }
    let f: FunctionIn = match t.function {
        Some(f @ Value::Object(_)) => typed_at(f, &at("function"))?,
        _ => {
            return Err(ApiError::bad(
                &at("function"),
                format!("`{}` must be an object", at("function")),
            ))
        }
    };
    let name = lenient(f.name).filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::bad(
            &at("function.name"),
            format!("`{}` is required", at("function.name")),
        )
    })?;
    if name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(ApiError::bad(
            &at("function.name"),
            format!("`{name}` is not a function name (letters, digits, _ - ., at most 64)"),
        ));
    }
    let parameters = match f.parameters {
        None => json!({"type": "object", "properties": {}}),
        Some(p) => Value::Object(p),
    };
    Ok(Tool {
        name,
        description: lenient(f.description).unwrap_or_default(),
        parameters,
    })
}

impl Tools {
    /// Whether the tools are shown to the model at all.
    pub fn active(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The tools the answer may call.
    fn callable(&self) -> impl Iterator<Item = &Tool> {
        self.list.iter().filter(move |t| match &self.choice {
            ToolChoice::Named(n) => &t.name == n,
            _ => true,
        })
    }

    /// The system message's part about the tools.
    pub fn system_text(&self) -> String {
        let mut s = String::from(
            "You can call functions. To call them, answer with only this JSON and nothing else: \
             {\"tool_calls\": [{\"name\": \"<function name>\", \"arguments\": {<arguments>}}]}",
        );
        if !self.parallel {
            s.push_str(" (one call at most)");
        }
        s.push_str(". The functions:");
        for t in self.callable() {
            s.push('\n');
            s.push_str(
                &json!({"name": t.name, "description": t.description, "parameters": t.parameters})
                    .to_string(),
            );
        }
        s
    }

    /// The messages with the tools described in the system message (added first when
    /// there is none), for a template that does not render tools; with one that does, the
    /// earlier calls stay as [`Message::tool_calls`] for it.
    pub fn add_to(&self, messages: &mut Vec<Message>) {
        if self.format != ToolFormat::Generic {
            return;
        }
        inline_calls(messages);
        if !self.active() {
            return;
        }
        let text = self.system_text();
        match messages.first_mut() {
            Some(m) if m.role == "system" => {
                m.content = format!("{}\n\n{text}", m.content);
            }
            _ => messages.insert(0, Message::new("system", text)),
        }
    }

    /// The `tools` a template that renders them is given: OpenAI's list, of the tools the
    /// answer may call.
    pub fn for_template(&self) -> Option<Value> {
        if self.format == ToolFormat::Generic || !self.active() {
            return None;
        }
        Some(Value::Array(
            self.callable()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}})
                })
                .collect(),
        ))
    }

    /// One call's schema, its arguments under `key`.
    fn call_schemas(&self, key: &str) -> Vec<Value> {
        self.callable()
            .map(|t| {
                // Arguments hold the declared properties only (as in OpenAI's strict
                // mode), unless the schema says otherwise: a function has no use for
                // others, and a small model would spend its tokens inventing them.
                let mut args = t.parameters.clone();
                closed(&mut args);
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, key: args},
                    "required": ["name", key],
                    "additionalProperties": false
                })
            })
            .collect()
    }

    /// The grammar of a forced call (`required` or a named function), in the format.
    pub fn grammar(&self) -> Option<Grammar> {
        if !matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_)) {
            return None;
        }
        match self.format {
            ToolFormat::Generic => {
                let mut items = json!({
                    "type": "array",
                    "items": {"anyOf": self.call_schemas("arguments")},
                    "minItems": 1
                });
                if !self.parallel {
                    items["maxItems"] = json!(1);
                }
                Some(Grammar::JsonSchema(json!({
                    "type": "object",
                    "properties": {"tool_calls": items},
                    "required": ["tool_calls"],
                    "additionalProperties": false
                })))
            }
            ToolFormat::Hermes => {
                // Compact JSON, as the engine writes JSON schemas (see `Grammars::compile`).
                let call = json!({"anyOf": self.call_schemas("arguments"),
                                  "x-guidance": {"whitespace_flexible": false, "lenient": false}});
                let more = if self.parallel {
                    " (\"\\n\" call)*"
                } else {
                    ""
                };
                Some(Grammar::Lark(format!(
                    "start: call{more}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {call}\n"
                )))
            }
            // One call: Llama 3's JSON format has no list of calls.
            ToolFormat::Llama3 => Some(Grammar::JsonSchema(
                json!({"anyOf": self.call_schemas("parameters")}),
            )),
        }
    }

    /// The calls an answer makes, if it is a call of listed functions in the format.
    pub fn read_calls(&self, text: &str) -> Option<Vec<ToolCall>> {
        if !self.active() {
            return None;
        }
        let (objects, key) = match self.format {
            ToolFormat::Generic => {
                let v: Value = serde_json::from_str(text.trim()).ok()?;
                (v.get("tool_calls")?.as_array()?.clone(), "arguments")
            }
            ToolFormat::Hermes => {
                let mut out = Vec::new();
                let mut rest = text;
                while let Some(at) = rest.find("<tool_call>") {
                    let body = &rest[at + "<tool_call>".len()..];
                    let (json, next) = match body.find("</tool_call>") {
                        Some(end) => (&body[..end], &body[end + "</tool_call>".len()..]),
                        None => (body, ""),
                    };
                    out.push(serde_json::from_str::<Value>(json.trim()).ok()?);
                    rest = next;
                }
                (out, "arguments")
            }
            ToolFormat::Llama3 => {
                let t = text.trim();
                let t = t.strip_prefix("<|python_tag|>").unwrap_or(t).trim();
                let v: Value = serde_json::from_str(t).ok()?;
                let key = if v.get("parameters").is_some() {
                    "parameters"
                } else {
                    "arguments"
                };
                (vec![v], key)
            }
        };
        if objects.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(objects.len());
        for c in &objects {
            let name = c.get("name")?.as_str()?;
            if !self.callable().any(|t| t.name == name) {
                return None;
            }
            let args = c.get(key).cloned().unwrap_or_else(|| json!({}));
            out.push(ToolCall {
                name: name.to_owned(),
                arguments: args.to_string(),
            });
        }
        Some(out)
    }
}

/// Earlier calls in kiln's generic format, for a template that does not render tools: each
/// becomes the text of the answer that made it.
pub fn inline_calls(messages: &mut [Message]) {
    for m in messages.iter_mut() {
        if let Some(calls) = m.tool_calls.take() {
            if m.content.is_empty() {
                m.content = generic_text(&calls);
            }
        }
    }
}

/// Earlier calls (as [`normalize_calls`] keeps them) as the answer text that made them in
/// kiln's generic format.
fn generic_text(calls: &Value) -> String {
    let out: Vec<Value> = calls
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
                .collect()
        })
        .unwrap_or_default();
    json!({ "tool_calls": out }).to_string()
}

/// An assistant message's earlier `tool_calls`, checked and kept as templates read them:
/// `arguments` as an object (OpenAI sends them as JSON text).
pub fn normalize_calls(p: &str, calls: &Value) -> Result<Value, ApiError> {
    let arr = calls.as_array().ok_or_else(|| {
        ApiError::bad(&format!("{p}.tool_calls"), "`tool_calls` must be an array")
    })?;
    let mut out = Vec::with_capacity(arr.len());
    for (j, c) in arr.iter().enumerate() {
        let f = c.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let args = f.and_then(|f| f.get("arguments"));
        let (Some(name), Some(args)) = (name, args) else {
            return Err(ApiError::bad(
                &format!("{p}.tool_calls[{j}]"),
                "a tool call needs `function.name` and `function.arguments`",
            ));
        };
        let args = match args {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
            v => v.clone(),
        };
        let mut call = json!({"type": "function", "function": {"name": name, "arguments": args}});
        if let Some(id) = c.get("id").filter(|v| v.is_string()) {
            call["id"] = id.clone();
        }
        out.push(call);
    }
    Ok(Value::Array(out))
}

/// A call in a response message's `tool_calls`.
#[derive(Debug, Clone, Serialize)]
pub struct CallOut {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut,
    /// The call's place, in streamed deltas.
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
}

/// The function a call names, and its arguments as JSON text.
#[derive(Debug, Clone, Serialize)]
struct FunctionOut {
    name: String,
    arguments: String,
}

/// The `tool_calls` of a response message (`index` for streamed deltas).
pub fn calls_json(calls: &[ToolCall], id_base: &str, with_index: bool) -> Vec<CallOut> {
    calls
        .iter()
        .enumerate()
        .map(|(k, c)| CallOut {
            id: format!("call_{id_base}_{k}"),
            kind: "function",
            function: FunctionOut {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            },
            index: with_index.then_some(k),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tool fields of a chat request body.
    fn tools_of(v: Value) -> Result<Option<Tools>, ApiError> {
        #[derive(Deserialize)]
        struct Body {
            tools: Option<Vec<ToolIn>>,
            tool_choice: Option<ToolChoiceIn>,
            parallel_tool_calls: Option<bool>,
        }
        let b: Body = crate::request::read(v.to_string().as_bytes())?;
        parse(b.tools, b.tool_choice, b.parallel_tool_calls)
    }

    /// The `response_format` of a request body.
    fn format_of(v: Value) -> Result<Option<Grammar>, ApiError> {
        #[derive(Deserialize)]
        struct Body {
            response_format: Option<ResponseFormatIn>,
        }
        let b: Body = crate::request::read(v.to_string().as_bytes())?;
        response_format(b.response_format)
    }

    #[test]
    fn bad_tools_name_their_field() {
        for (v, field) in [
            (
                json!({"tools": [{"type": "function", "function": {}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tools": [{"type": "function"}]}),
                "tools[0].function",
            ),
            (
                json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
                "tools[0].type",
            ),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
                "tools[0].function.parameters",
            ),
            (
                json!({"tools": [{"function": {"name": "f"}}, {"function": {"name": "f"}}]}),
                "tools[1].function.name",
            ),
            (
                json!({"tools": [{"function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}),
                "tool_choice.function.name",
            ),
            (
                json!({"tools": [{"function": {"name": "f"}}], "tool_choice": "always"}),
                "tool_choice",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"tools": {}}), "tools"),
        ] {
            let e = tools_of(v.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{v}: {}", e.message);
        }
        for (v, field) in [
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format.type",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 4}}}),
                "response_format.json_schema.schema",
            ),
            (
                json!({"response_format": {"type": "regex"}}),
                "response_format.regex",
            ),
        ] {
            let e = format_of(v.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{v}: {}", e.message);
        }
    }

    #[test]
    fn strict_schemas_close_their_objects() {
        let mut s = json!({
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "integer"}}},
                "c": {"type": "object", "additionalProperties": true},
                "properties": {"enum": [{"type": "object"}]}
            },
            "$defs": {"D": {"type": "object", "properties": {}}}
        });
        closed(&mut s);
        assert_eq!(s["additionalProperties"], json!(false));
        assert_eq!(s["properties"]["a"]["additionalProperties"], json!(false));
        assert_eq!(s["properties"]["c"]["additionalProperties"], json!(true));
        assert_eq!(s["$defs"]["D"]["additionalProperties"], json!(false));
        assert_eq!(
            s["properties"]["properties"]["enum"][0],
            json!({"type": "object"})
        );
    }

    #[test]
    fn calls_are_read_only_for_listed_functions() {
        let t =
            tools_of(json!({"tools": [{"type": "function", "function": {"name": "get_weather"}}]}))
                .unwrap()
                .unwrap();
        let calls = t
            .read_calls(
                r#" {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}"#,
            )
            .unwrap();
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
        assert!(t
            .read_calls(r#"{"tool_calls": [{"name": "rm_rf", "arguments": {}}]}"#)
            .is_none());
        assert!(t.read_calls("The weather is fine.").is_none());
        assert!(t.grammar().is_none(), "auto is not forced");
        let req = Tools {
            choice: ToolChoice::Required,
            ..t.clone()
        };
        assert!(req.grammar().is_some());
        // A call made earlier reads back as the text that made it.
        let earlier = normalize_calls(
            "messages[1]",
            &json!([{"id": "x", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]),
        )
        .unwrap();
        assert_eq!(
            earlier[0]["function"]["arguments"],
            json!({"city": "Paris"})
        );
        assert_eq!(t.read_calls(&generic_text(&earlier)).unwrap(), calls);
        assert!(normalize_calls("m", &json!([{"function": {"name": "f"}}])).is_err());
    }

    #[test]
    fn native_formats_are_read_and_forced_in_their_own_shape() {
        let t = tools_of(json!({"tools": [
            {"type": "function", "function": {"name": "get_weather",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time"}}]}))
        .unwrap()
        .unwrap();
        let hermes = Tools {
            format: ToolFormat::Hermes,
            ..t.clone()
        };
        let two = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let calls = hermes.read_calls(two).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(calls[1].name, "get_time");
        assert!(hermes.read_calls("no call here").is_none());
        assert!(hermes
            .read_calls("<tool_call>\n{\"name\": \"rm\", \"arguments\": {}}\n</tool_call>")
            .is_none());
        // The template gets OpenAI's list; no system text is added.
        assert_eq!(
            hermes.for_template().unwrap()[1]["function"]["name"],
            "get_time"
        );
        let mut msgs = vec![Message::new("user", "hi")];
        hermes.add_to(&mut msgs);
        assert_eq!(msgs.len(), 1);
        let forced = Tools {
            choice: ToolChoice::Named("get_weather".into()),
            ..hermes.clone()
        };
        match forced.grammar() {
            Some(Grammar::Lark(g)) => {
                assert!(
                    g.contains("<tool_call>")
                        && g.contains("get_weather")
                        && !g.contains("get_time")
                )
            }
            g => panic!("{g:?}"),
        }
        let llama = Tools {
            format: ToolFormat::Llama3,
            ..t.clone()
        };
        let c = llama
            .read_calls(
                "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}",
            )
            .unwrap();
        assert_eq!(
            (c[0].name.as_str(), c[0].arguments.as_str()),
            ("get_weather", r#"{"city":"Rome"}"#)
        );
        // Generic tools: an earlier call becomes the text that made it.
        let mut msgs = vec![Message {
            tool_calls: Some(
                json!([{"type": "function", "function": {"name": "get_time", "arguments": {}}}]),
            ),
            ..Message::new("assistant", "")
        }];
        t.add_to(&mut msgs);
        assert!(msgs[1].tool_calls.is_none());
        assert_eq!(t.read_calls(&msgs[1].content).unwrap()[0].name, "get_time");
    }
}
