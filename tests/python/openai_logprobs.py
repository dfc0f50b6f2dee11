"""Asks genq's gateway for log-probs with the official `openai` Python package, as evaluation
harnesses do (lm-evaluation-harness's `local-completions` scores a prompt with `echo=True,
max_tokens=0, logprobs=1`), and prints one JSON object with what it saw (tests/tests/gateway.rs
asserts on it).

Usage: openai_logprobs.py BASE_URL MODEL API_KEY
"""

import json
import sys

import openai

base_url, model, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
out = {}

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def completion(c):
    choice = c.choices[0]
    lp = choice.logprobs
    return {
        "text": choice.text,
        "finish": choice.finish_reason,
        "prompt_tokens": c.usage.prompt_tokens,
        "tokens": lp.tokens,
        "token_logprobs": lp.token_logprobs,
        "top_logprobs": lp.top_logprobs,
        "text_offset": lp.text_offset,
    }


out["generated"] = completion(client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3))
out["scored"] = completion(client.completions.create(model=model, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1))
out["echoed"] = completion(client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2))

r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
out["chat"] = {
    "content": r.choices[0].message.content,
    "entries": [
        {"token": e.token, "logprob": e.logprob, "bytes": e.bytes, "top": [[t.token, t.logprob] for t in e.top_logprobs]}
        for e in r.choices[0].logprobs.content
    ],
}
print(json.dumps(out))
