"""Drives genq's HTTP gateway with the official `openai` Python package, as any OpenAI client
would, and prints one JSON object with what it saw (tests/tests/gateway.rs asserts on it).

Usage: openai_client.py BASE_URL MODEL API_KEY
"""

import json
import sys

import openai

base_url, model, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
out = {"openai_version": openai.__version__}

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
PARAMS = {"max_tokens": 16, "temperature": 0, "seed": 7}


def usage(u):
    return None if u is None else {"prompt": u.prompt_tokens, "completion": u.completion_tokens, "total": u.total_tokens}


def error(fn):
    try:
        fn()
    except openai.APIStatusError as e:
        return {"status": e.status_code, "code": e.code, "param": e.param, "type": e.type, "message": e.message}
    return {"status": None}


# Completions, plain and streamed (same seed, greedy: same text).
c = client.completions.create(model=model, prompt=PROMPT, **PARAMS)
out["completion"] = {"id": c.id, "object": c.object, "text": c.choices[0].text, "finish": c.choices[0].finish_reason, "usage": usage(c.usage)}

text, finish, last_usage, chunks = "", None, None, 0
for chunk in client.completions.create(model=model, prompt=PROMPT, stream=True, stream_options={"include_usage": True}, **PARAMS):
    chunks += 1
    if chunk.usage is not None:
        last_usage = usage(chunk.usage)
    for choice in chunk.choices:
        text += choice.text
        finish = choice.finish_reason or finish
out["completion_stream"] = {"text": text, "finish": finish, "usage": last_usage, "chunks": chunks}

# Chat, plain and streamed.
r = client.chat.completions.create(model=model, messages=CHAT, **PARAMS)
msg = r.choices[0].message
out["chat"] = {"id": r.id, "object": r.object, "role": msg.role, "content": msg.content, "finish": r.choices[0].finish_reason, "usage": usage(r.usage)}

content, roles, finish, chunks = "", [], None, 0
for chunk in client.chat.completions.create(model=model, messages=CHAT, stream=True, **PARAMS):
    chunks += 1
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        content += choice.delta.content or ""
        finish = choice.finish_reason or finish
out["chat_stream"] = {"content": content, "roles": roles, "finish": finish, "chunks": chunks}

# A client that stops reading a long stream: the gateway should cancel its job.
stream = client.chat.completions.create(
    model=model, messages=CHAT, stream=True, max_tokens=2000, temperature=0.7, seed=1, extra_body={"min_tokens": 2000}
)
abandoned = None
for chunk in stream:
    abandoned = chunk.id
    if any(ch.delta.content for ch in chunk.choices):
        break
stream.close()
out["abandoned_stream_id"] = abandoned

# Several choices (n): samples of one job, seeds counting up from the request's.
c = client.completions.create(model=model, prompt=PROMPT, n=3, max_tokens=5, temperature=1.0, seed=11)
out["choices"] = {"indexes": [ch.index for ch in c.choices], "texts": [ch.text for ch in c.choices], "usage": usage(c.usage)}
r = client.chat.completions.create(model=model, messages=CHAT, n=2, max_tokens=5, temperature=1.0, seed=11)
out["chat_choices"] = {"indexes": [ch.index for ch in r.choices], "contents": [ch.message.content for ch in r.choices], "usage": usage(r.usage)}

out["models"] = [m.id for m in client.models.list().data]

out["errors"] = {
    "top_p": error(lambda: client.completions.create(model=model, prompt=PROMPT, top_p=5, max_tokens=4)),
    "model": error(lambda: client.chat.completions.create(model="no-such-model", messages=CHAT, max_tokens=4)),
    "n": error(lambda: client.completions.create(model=model, prompt=PROMPT, n=9, max_tokens=4)),
    "auth": error(lambda: openai.OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0).models.list()),
}

print(json.dumps(out))
