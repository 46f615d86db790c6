//! `JsonBody<T>`: a JSON request body checked against the schema that `T` publishes
//! in the spec, reporting every bad field at once (poem-openapi's own `Json` stops at
//! the first and answers in plain text). Malformed JSON is a 400; a well-formed body
//! that breaks the schema is a 422 with `details`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde_json::Value;

use super::error::{ApiError, FieldError};

/// A request body of type `T`, validated field by field.
pub struct JsonBody<T>(pub T);

const JSON: &str = "application/json; charset=utf-8";

fn is_json(content_type: &str) -> bool {
    matches!(content_type.parse::<mime::Mime>(), Ok(ct) if ct.type_() == "application"
        && (ct.subtype() == "json" || ct.suffix().is_some_and(|s| s == "json")))
}

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = JSON;

    fn check_content_type(content_type: &str) -> bool {
        is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ParseFromJSON> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        if let Some(content_type) = request.content_type() {
            if !is_json(content_type) {
                return Err(ApiError::new(400, "bad_request", "the body must be application/json").into());
            }
        }
        let data = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        // An empty body is an empty object, so missing fields are named one by one.
        let value: Value = if data.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&data)
                .map_err(|e| ApiError::new(400, "malformed_json", format!("the body is not valid JSON: {e}")))?
        };
        let (registry, schema) = schema_of::<T>();
        let mut details = Vec::new();
        check(registry, schema, &value, "", &mut details);
        if !details.is_empty() {
            return Err(ApiError::invalid(details).into());
        }
        T::parse_from_json(Some(value)).map(JsonBody).map_err(|e| {
            ApiError::invalid(vec![FieldError { path: String::new(), error: e.into_message() }]).into()
        })
    }
}

impl<'a, T: ParseFromJSON> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType { content_type: JSON, schema: <Self as Payload>::schema_ref() }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        <Self as ParsePayload>::from_request(request, body).await
    }
}

/// `T`'s schema and the registry it refers to, built once per body type (building
/// them is most of a small request's cost otherwise).
fn schema_of<T: Type>() -> &'static (Registry, MetaSchemaRef) {
    static SCHEMAS: OnceLock<Mutex<HashMap<&'static str, &'static (Registry, MetaSchemaRef)>>> = OnceLock::new();
    let mut schemas = SCHEMAS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    schemas.entry(std::any::type_name::<T>()).or_insert_with(|| {
        let mut registry = Registry::new();
        T::register(&mut registry);
        // One per body type, for the life of the process.
        Box::leak(Box::new((registry, T::schema_ref())))
    })
}

/// Whether `text` matches the schema's `pattern`; each pattern is compiled once.
fn matches(pattern: &str, text: &str) -> bool {
    static PATTERNS: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let mut patterns = PATTERNS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    let compiled = patterns.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok());
    compiled.as_ref().is_some_and(|re| re.is_match(text))
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn resolve<'r>(registry: &'r Registry, schema: &'r MetaSchemaRef) -> Option<&'r MetaSchema> {
    match schema {
        MetaSchemaRef::Inline(schema) => Some(schema),
        MetaSchemaRef::Reference(name) => registry.schemas.get(name.as_str()),
    }
}

/// Checks `value` against the schema, pushing one detail per bad field.
fn check(registry: &Registry, schema: &MetaSchemaRef, value: &Value, path: &str, out: &mut Vec<FieldError>) {
    let Some(schema) = resolve(registry, schema) else { return };
    macro_rules! bad {
        ($why:expr) => {
            out.push(FieldError { path: path.to_string(), error: $why })
        };
    }
    if value.is_null() {
        if !schema.nullable && !schema.ty.is_empty() {
            bad!("must not be null".into());
        }
        return;
    }
    match schema.ty {
        "object" => {
            let Some(object) = value.as_object() else { return bad!("must be an object".into()) };
            for required in &schema.required {
                if object.get(*required).is_none_or(Value::is_null) {
                    out.push(FieldError { path: join(path, required), error: "is required".into() });
                }
            }
            for (name, property) in &schema.properties {
                if let Some(field) = object.get(*name).filter(|v| !v.is_null()) {
                    check(registry, property, field, &join(path, name), out);
                }
            }
        }
        "string" => {
            let Some(text) = value.as_str() else { return bad!("must be a string".into()) };
            let chars = text.chars().count();
            if let Some(min) = schema.min_length.filter(|min| chars < *min) {
                bad!(format!("must be at least {min} characters"));
            } else if let Some(max) = schema.max_length.filter(|max| chars > *max) {
                bad!(format!("must be at most {max} characters"));
            } else if let Some(pattern) = &schema.pattern {
                if !matches(pattern, text) {
                    bad!(format!("must match {pattern}"));
                }
            }
            if !schema.enum_items.is_empty() && !schema.enum_items.contains(value) {
                let allowed: Vec<String> = schema.enum_items.iter().map(Value::to_string).collect();
                bad!(format!("must be one of {}", allowed.join(", ")));
            }
        }
        "integer" | "number" => {
            let Some(number) = value.as_f64() else { return bad!(format!("must be an {}", schema.ty)) };
            if schema.ty == "integer" && !(value.is_i64() || value.is_u64()) {
                return bad!("must be an integer".into());
            }
            if let Some(min) = schema.minimum.filter(|min| number < *min) {
                bad!(format!("must be at least {min}"));
            } else if let Some(max) = schema.maximum.filter(|max| number > *max) {
                bad!(format!("must be at most {max}"));
            }
        }
        "boolean" if !value.is_boolean() => bad!("must be true or false".into()),
        "array" => {
            let Some(items) = value.as_array() else { return bad!("must be an array".into()) };
            if let Some(min) = schema.min_items.filter(|min| items.len() < *min) {
                bad!(format!("must have at least {min} items"));
            } else if let Some(max) = schema.max_items.filter(|max| items.len() > *max) {
                bad!(format!("must have at most {max} items"));
            }
            if let Some(item_schema) = &schema.items {
                for (i, item) in items.iter().enumerate() {
                    check(registry, item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
    for part in &schema.all_of {
        check(registry, part, value, path, out);
    }
}
