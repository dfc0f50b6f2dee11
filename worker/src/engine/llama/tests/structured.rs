//! Jobs with an output `format` on the real model: every text under a JSON Schema parses and
//! validates (nested objects, enums, bounded arrays, patterned strings, unions), regexes and Lark
//! grammars match in full, greedy and sampled; sampling stays seeded within the allowed tokens;
//! `max_new_tokens` cuts a text short with `length`; a format that does not compile is refused
//! naming the field.

use serde_json::{json, Value};

use super::{finish, job, run_to_end, smollm2};
use crate::engine::llama::WeightFormat;
use crate::engine::Engine;
use genq_shared::FinishReason;

/// A chat job asking `ask`, under `format`, drawing with `sampling` (JSON fields).
fn format_job(id: &str, ask: &str, format: &Value, sampling: &str, max_new: u32) -> String {
    let messages = json!([{"role": "user", "content": ask}]);
    format!(r#"{{"id":"{id}","messages":{messages},"format":{format},"max_new_tokens":{max_new},{sampling}}}"#)
}

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Describe a person with a name and an age.",
            json!({"type": "object", "properties": {"person": {"type": "object", "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 16},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["name", "age"], "additionalProperties": false}},
                "required": ["person"], "additionalProperties": false}),
        ),
        (
            "What colour is the sky? Are you sure?",
            json!({"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "sure": {"type": "boolean"}},
                "required": ["color", "sure"], "additionalProperties": false}),
        ),
        (
            "List a few small numbers.",
            json!({"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 2, "maxItems": 4}),
        ),
        (
            "Give a product code and a date.",
            json!({"type": "object", "properties": {
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                "date": {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])$"}},
                "required": ["code", "date"], "additionalProperties": false}),
        ),
        (
            "Write an order of one to three items.",
            json!({"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object", "properties": {"sku": {"type": "string", "maxLength": 8}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
                "required": ["sku", "qty"], "additionalProperties": false}}},
                "required": ["items"], "additionalProperties": false}),
        ),
        (
            "How tall is a house, in metres, if you know?",
            json!({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "null"}, {"type": "string", "enum": ["tall", "short"]}]}),
        ),
    ]
}

const GREEDY: &str = r#""temperature":0"#;
const SAMPLED: &str = r#""temperature":0.9,"top_p":0.95,"top_k":40,"seed":7"#;

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn every_text_under_a_format_parses_and_validates() {
    let mut e = smollm2(WeightFormat::Packed);
    let mut expect: Vec<(u64, Value, &str)> = Vec::new();
    let mut id = 0;
    for sampling in [GREEDY, SAMPLED] {
        for (ask, schema) in schemas() {
            id += 1;
            let format = json!({"type": "json_schema", "schema": schema});
            e.encode_and_admit(id, &job(&format_job(&format!("s{id}"), ask, &format, sampling, 96)), id).expect("admit");
            expect.push((id, schema, sampling));
        }
        id += 1;
        e.encode_and_admit(id, &job(&format_job(&format!("o{id}"), "Describe a cat.", &json!({"type": "json_object"}), sampling, 96)), id).expect("admit");
        expect.push((id, json!({"type": "object"}), sampling));
    }
    let rules = [
        ("Answer yes or no, then a number.", r"(yes|no), [0-9]{1,3}"),
        ("What is the capital of France?", r"The capital is [A-Z][a-z]{2,12}\."),
    ];
    let mut texts: Vec<(u64, String)> = Vec::new();
    for (ask, pattern) in rules {
        id += 1;
        e.encode_and_admit(id, &job(&format_job(&format!("r{id}"), ask, &json!({"type": "regex", "pattern": pattern}), SAMPLED, 48)), id).expect("admit");
        texts.push((id, pattern.to_string()));
    }
    let lark = "start: \"Colour: \" COLOUR \"; size: \" SIZE\nCOLOUR: \"red\" | \"green\" | \"blue\"\nSIZE: /[0-9]{1,2} cm/";
    id += 1;
    e.encode_and_admit(id, &job(&format_job("lark", "Describe a ball.", &json!({"type": "lark", "grammar": lark}), GREEDY, 48)), id).expect("admit");
    texts.push((id, r#"Colour: (red|green|blue); size: [0-9]{1,2} cm"#.to_string()));

    let out = run_to_end(&mut e, 512);
    for (id, schema, sampling) in &expect {
        let o = &out[id];
        assert_eq!(finish(o), Some(FinishReason::Stop), "job {id} ({sampling}) ended early: {:?}", o.text);
        let value: Value = serde_json::from_str(&o.text).unwrap_or_else(|err| panic!("job {id} ({sampling}): {:?} is not JSON: {err}", o.text));
        let validator = jsonschema::validator_for(schema).expect("schema compiles");
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "job {id} ({sampling}): {} breaks {schema}: {errors:?}", o.text);
    }
    for (id, pattern) in &texts {
        let o = &out[id];
        assert_eq!(finish(o), Some(FinishReason::Stop), "job {id}: {:?}", o.text);
        let full = fancy_regex::Regex::new(&format!("^(?:{pattern})$")).expect("pattern");
        assert!(full.is_match(&o.text).expect("match"), "job {id}: {:?} does not match {pattern}", o.text);
    }
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn seeded_sampling_under_a_format_is_the_same_alone_and_in_a_batch() {
    let format = json!({"type": "json_schema", "schema": schemas()[4].1});
    let one = job(&format_job("a", "Write an order.", &format, r#""temperature":1.2,"seed":3"#, 64));
    let mut alone = smollm2(WeightFormat::Packed);
    alone.encode_and_admit(1, &one, 3).expect("admit");
    let alone = run_to_end(&mut alone, 512).remove(&1).expect("outcome");

    let mut batch = smollm2(WeightFormat::Packed);
    batch.encode_and_admit(1, &one, 3).expect("admit");
    for i in 2..6u64 {
        batch.encode_and_admit(i, &job(&format_job(&format!("b{i}"), "Write a long story.", &json!({"type": "json_object"}), GREEDY, 40)), i).expect("admit");
    }
    let together = run_to_end(&mut batch, 512).remove(&1).expect("outcome");
    assert_eq!(alone.text, together.text, "the same tokens whatever runs beside it");
    // Another seed draws another text within the same schema.
    let mut other = smollm2(WeightFormat::Packed);
    other.encode_and_admit(1, &job(&format_job("a", "Write an order.", &format, r#""temperature":1.2,"seed":4"#, 64)), 4).expect("admit");
    let other = run_to_end(&mut other, 512).remove(&1).expect("outcome");
    assert_ne!(alone.text, other.text, "seeds apply within the allowed tokens");
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn max_new_tokens_before_the_text_is_complete_ends_with_length() {
    let mut e = smollm2(WeightFormat::Packed);
    let format = json!({"type": "json_schema", "schema": schemas()[0].1});
    e.encode_and_admit(1, &job(&format_job("a", "Describe a person.", &format, GREEDY, 4)), 1).expect("admit");
    let o = run_to_end(&mut e, 512).remove(&1).expect("outcome");
    assert_eq!((finish(&o), o.tokens), (Some(FinishReason::Length), 4), "{:?}", o.text);
    assert!(o.text.starts_with("{\"person\""), "a prefix of the format's text: {:?}", o.text);
    assert!(serde_json::from_str::<Value>(&o.text).is_err());
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn a_format_that_does_not_compile_is_refused_naming_the_field() {
    let mut e = smollm2(WeightFormat::Packed);
    for format in [
        json!({"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}),
        json!({"type": "regex", "pattern": "(unclosed"}),
        json!({"type": "lark", "grammar": "start: undefined_rule"}),
        // A keyword the compiler does not implement is refused, never ignored.
        json!({"type": "json_schema", "schema": {"type": "array", "uniqueItems": true}}),
    ] {
        let err = e.encode_and_admit(1, &job(&format_job("a", "hi", &format, GREEDY, 8)), 1).expect_err("refused");
        assert_eq!(err.field, "format", "{err}");
        assert!(err.message.contains("cannot be compiled"), "{err}");
        for named in ["missing", "unclosed", "undefined_rule", "uniqueItems"] {
            if format.to_string().contains(named) {
                assert!(err.message.contains(named), "the message names {named}: {err}");
            }
        }
        assert_eq!(e.active(), 0, "nothing admitted");
    }
}
