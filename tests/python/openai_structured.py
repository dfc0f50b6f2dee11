"""Asks genq's gateway for structured output with the official `openai` Python package:
`response_format` json_schema and json_object on chat, json_object (through `extra_body`) on
completions, both in a batch file, and a schema that cannot be compiled. Prints one JSON object
with the schemas and the texts (tests/tests/gateway.rs validates each against its schema).

Usage: openai_structured.py BASE_URL MODEL API_KEY
"""

import json
import sys
import time

import openai

base_url, model, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=180)

SCHEMAS = [
    ("Describe a city.", {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0, "maximum": 50000000},
            "tags": {"type": "array", "items": {"enum": ["old", "big", "coastal", "cold"]}, "maxItems": 3},
        },
        "required": ["city", "country", "population", "tags"],
        "additionalProperties": False,
    }),
    ("Rate a film from 1 to 5 and say why.", {
        "type": "object",
        "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}, "why": {"type": "string", "maxLength": 40}},
        "required": ["stars", "why"],
        "additionalProperties": False,
    }),
    ("Give a hex colour.", {
        "type": "object",
        "properties": {"hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}},
        "required": ["hex"],
        "additionalProperties": False,
    }),
]

out = {"schemas": [s for _, s in SCHEMAS], "chat": [], "batch": {}}
for ask, schema in SCHEMAS:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": ask}], max_tokens=96, temperature=0.7, seed=11,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
    )
    out["chat"].append({"text": r.choices[0].message.content, "finish": r.choices[0].finish_reason})

r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Reply with a JSON object whose only key is \"ok\", set to true."}], max_tokens=96, temperature=0,
    response_format={"type": "json_object"},
)
out["chat_object"] = {"text": r.choices[0].message.content, "finish": r.choices[0].finish_reason}

c = client.completions.create(
    model=model, prompt='Two JSON objects.\nFirst: {"name": "Sun", "kind": "star"}\nSecond:', max_tokens=96, temperature=0,
    extra_body={"response_format": {"type": "json_object"}},
)
out["completion_object"] = {"text": c.choices[0].text, "finish": c.choices[0].finish_reason}

# A schema the compiler refuses: the error names the field.
try:
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"$ref": "#/$defs/missing"}}},
    )
    out["uncompilable"] = {"status": None}
except openai.APIStatusError as e:
    out["uncompilable"] = {"status": e.status_code, "param": e.param, "message": e.message}

# The same formats in a batch file, on both endpoints.
lines = [
    {"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": model, "messages": [{"role": "user", "content": ask}], "max_tokens": 96, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}}
    for i, (ask, schema) in enumerate(SCHEMAS)
]
data = "\n".join(json.dumps(l) for l in lines).encode()
f = client.files.create(file=("structured.jsonl", data), purpose="batch")
b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
until = time.time() + 240
while b.status not in ("completed", "failed", "cancelled", "expired") and time.time() < until:
    time.sleep(0.5)
    b = client.batches.retrieve(b.id)
out["batch"]["status"] = b.status
out["batch"]["lines"] = []
if b.output_file_id:
    for l in client.files.content(b.output_file_id).text.splitlines():
        if l.strip():
            line = json.loads(l)
            choice = line["response"]["body"]["choices"][0]
            out["batch"]["lines"].append({"custom_id": line["custom_id"], "text": choice["message"]["content"], "finish": choice["finish_reason"]})
print(json.dumps(out))
