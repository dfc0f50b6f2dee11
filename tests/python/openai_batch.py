"""Runs OpenAI batches through genq's gateway with the official `openai` Python package: files
uploaded, a batch created, polled, listed and read back, a bad line and a refused file, a batch
cancelled, a file deleted. Prints one JSON object with what it saw (tests/tests/gateway.rs
asserts on it).

Usage: openai_batch.py BASE_URL MODEL API_KEY
"""

import json
import sys
import time

import openai

base_url, model, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
out = {}


def upload(lines, name):
    data = "\n".join(json.dumps(line) for line in lines).encode()
    return client.files.create(file=(name, data), purpose="batch")


def line(custom_id, body, url="/v1/completions"):
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": model, **body}}


def wait(batch_id, seconds=180):
    until = time.time() + seconds
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled", "expired") or time.time() > until:
            return b
        time.sleep(0.5)


def error(fn):
    try:
        fn()
    except openai.APIStatusError as e:
        return {"status": e.status_code, "code": e.code, "param": e.param, "message": e.message}
    return {"status": None}


def summary(b):
    counts = b.request_counts
    return {
        "id": b.id, "status": b.status, "endpoint": b.endpoint, "metadata": b.metadata,
        "counts": {"total": counts.total, "completed": counts.completed, "failed": counts.failed},
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": b.created_at, "completed_at": b.completed_at, "cancelled_at": b.cancelled_at,
    }


def lines_of(file_id):
    if file_id is None:
        return []
    return [json.loads(l) for l in client.files.content(file_id).text.splitlines() if l.strip()]


# Completions: 12 good lines and one that breaks a rule.
good = [line(f"req-{i}", {"prompt": f"List {i} colours:", "max_tokens": 4, "temperature": 0, "logprobs": 1}) for i in range(12)]
f = upload(good + [line("bad-top-p", {"prompt": "x", "top_p": 9})], "completions.jsonl")
out["file"] = {"id": f.id, "purpose": f.purpose, "bytes": f.bytes, "filename": f.filename}
b = client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h", metadata={"run": "ci"})
out["created_status"] = b.status
b = wait(b.id)
out["completions"] = summary(b)
out["output"] = lines_of(b.output_file_id)
out["errors"] = lines_of(b.error_file_id)

# Chat, one line asking for two choices.
chat = [line(f"chat-{i}", {"messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 3, "temperature": 0}, "/v1/chat/completions") for i in range(3)]
chat.append(line("chat-n2", {"messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 3, "temperature": 1.0, "seed": 5, "n": 2}, "/v1/chat/completions"))
c = client.batches.create(input_file_id=upload(chat, "chat.jsonl").id, endpoint="/v1/chat/completions", completion_window="24h")
c = wait(c.id)
out["chat"] = summary(c)
out["chat_output"] = lines_of(c.output_file_id)

# Cancelled: long requests, cancelled at once.
long = [line(f"long-{i}", {"prompt": "Tell a long story.", "max_tokens": 400, "min_tokens": 400}) for i in range(8)]
d = client.batches.create(input_file_id=upload(long, "long.jsonl").id, endpoint="/v1/completions", completion_window="24h")
client.batches.cancel(d.id)
d = wait(d.id)
out["cancelled"] = summary(d)

out["listed"] = [x.id for x in client.batches.list(limit=2)]
out["files_listed"] = [x.id for x in client.files.list()]
twice = upload([line("same", {"prompt": "a"}), line("same", {"prompt": "b"})], "twice.jsonl")
out["refused"] = {
    "duplicate": error(lambda: client.batches.create(input_file_id=twice.id, endpoint="/v1/completions", completion_window="24h")),
    "endpoint": error(lambda: client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")),
    "unknown_batch": error(lambda: client.batches.retrieve("batch-nope")),
}
out["deleted"] = client.files.delete(twice.id).deleted
out["after_delete"] = error(lambda: client.files.retrieve(twice.id))
print(json.dumps(out))
