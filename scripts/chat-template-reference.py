#!/usr/bin/env python3
"""Reference renderings of chat templates, for genq's chat-template test.

Renders the chat templates llama.cpp keeps in `models/templates/` (copies of the models' own
Hugging Face templates, in the llama.cpp sources scripts/fetch-llamacpp-src.sh unpacks) with
jinja2 set up as transformers' `apply_chat_template` sets it up: a sandboxed environment with
trim_blocks, lstrip_blocks and the loopcontrols extension, `raise_exception`, `strftime_now`
(here on a fixed clock, so the Rust side can be given the same one) and transformers' own
`tojson` (json.dumps, no HTML escaping). The inputs are fixed conversations, plus a few short
inline templates for the Python behaviour the real ones lean on (string and dict methods,
printing None and lists, tojson's arguments, strftime directives, break/continue).

Each case keeps either the exact text rendered or, where the template refuses the messages
(`raise_exception`), the message it raised. worker/tests/chat_templates.rs renders every case
with genq and requires the same bytes or the same refusal.

Regenerate the fixture (system python3 with jinja2 3.1; no network needed):

    python3 scripts/chat-template-reference.py "$(scripts/fetch-llamacpp-src.sh)"

The argument is the vendored llama.cpp directory (default: $GENQ_LLAMACPP_SRC, else
.cache/llamacpp/src/vendor/llama.cpp); the fixture goes to
worker/tests/fixtures/chat_templates.json.
"""

import json
import os
import sys
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "worker" / "tests" / "fixtures" / "chat_templates.json"

# The clock strftime_now reads, in both renderers: a Friday, one-digit day and hour, so that
# padding and names show.
NOW = datetime(2025, 3, 7, 9, 5, 3)

# Template file (in models/templates/) -> the BOS and EOS strings the model's tokenizer names.
TEMPLATES = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B.jinja": ("", "<|im_end|>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": ("<s>", "</s>"),
    "HuggingFaceTB-SmolLM3-3B.jinja": ("", "<|im_end|>"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>"),
    # `{% generation %}` tags; `tools is iterable` with tools None.
    "LFM2.5-8B-A1B.jinja": ("<|startoftext|>", "<|im_end|>"),
    "Qwen3-Coder.jinja": ("", "<|im_end|>"),
}


def msg(role, content):
    return {"role": role, "content": content}


# Leading and trailing whitespace throughout, so that templates that `.strip()` or `|trim`
# differ from those that do not.
CONVERSATIONS = [
    ("system_user", True, [
        msg("system", "  You are a concise assistant.\n"),
        msg("user", " What is the capital of France?  \n"),
    ]),
    ("user_only", True, [msg("user", "Hello!  ")]),
    ("user_only_no_generation_prompt", False, [msg("user", "\tHello!")]),
    ("multi_turn", True, [
        msg("system", "Answer in French. "),
        msg("user", "Hi "),
        msg("assistant", " Bonjour !\n"),
        msg("user", "How are you?"),
    ]),
    ("ending_with_assistant", False, [
        msg("user", "2+2?"),
        msg("assistant", "\n4\n"),
    ]),
    ("reasoning_in_history", True, [
        msg("user", "Think first: 3*7?"),
        msg("assistant", "<think>\n3*7 is 21.\n</think>\n\n21"),
        msg("user", "And 3*8?"),
    ]),
    ("system_with_think_switch", True, [
        msg("system", "Be brief. /no_think  "),
        msg("user", "Name a colour."),
    ]),
    ("unicode_and_markup", True, [
        msg("user", 'Grüße, 世界! 🌍 "quoted" <tag> & {braces} done'),
    ]),
    ("roles_not_alternating", True, [
        msg("user", "first"),
        msg("user", "second"),
    ]),
    ("assistant_before_user", True, [
        msg("system", "S"),
        msg("assistant", "A"),
        msg("user", "U"),
    ]),
]

# Short templates for the Python behaviour real templates rely on; rendered with the messages
# of the case named.
SNIPPETS = [
    ("string_methods", "system_user",
     "{% set s = messages[1].content %}"
     "[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}][{{ '--x--'.strip('-') }}]"
     "[{{ s.split() | join('|') }}][{{ 'a,b,,c'.split(',') | join('|') }}]"
     "[{{ 'a,b,c'.split(',', 1) | join('|') }}][{{ s.strip().startswith('What') }}]"
     "[{{ s.strip().endswith('?') }}][{{ 'Hi'.upper() }}{{ 'Hi'.lower() }}]"
     "[{{ 'hello world'.title() }}][{{ 'a-b-c'.replace('-', '+') }}]"
     "[{{ 'banana'.count('a') }}][{{ 'banana'.find('n') }}][{{ 'banana'.rfind('n') }}]"
     "[{{ 'x'.isspace() }}{{ '42'.isdigit() }}][{{ 'hello'.capitalize() }}]"
     "[{{ ', '.join(['a', 'b']) }}][{{ 'a\nb'.splitlines() | join('|') }}]"),
    ("dict_methods", "user_only",
     "{% set d = {'b': 1, 'a': 2} %}"
     "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}"
     "[{{ d.get('a') }}][{{ d.get('z', 'dflt') }}][{{ d.get('z') }}]"
     "[{{ d.keys() | list | join(',') }}][{{ d.values() | list | join(',') }}]"
     "[{{ messages[0].get('role') }}][{% for k, v in messages[0].items() %}{{ k }},{% endfor %}]"),
    ("printing_python_values", "user_only",
     "{{ none }}|{{ true }}|{{ false }}|{{ 2.0 }}|{{ 1.5 }}|{{ [1, 'a', none, true] }}|"
     "{{ {'k': 'v', 'n': none} }}|{{ messages }}|{{ none | string }}|{{ ['x'] | string }}"),
    ("tojson_as_transformers_defines_it", "unicode_and_markup",
     "{% set d = {'name': 'f', 'x': [1, 2.5, none, true, false], 'nested': {'b': [], 'a': {}},"
     " 's': messages[0].content ~ \"\\n\\t'\\\\\"} %}"
     "{{ d | tojson }}\n{{ d | tojson(indent=4) }}\n{{ d | tojson(indent=2, sort_keys=true) }}\n"
     "{{ d | tojson(ensure_ascii=true) }}\n{{ d | tojson(separators=(',', ':')) }}\n"
     "{{ messages | tojson }}\n{{ 'plain' | tojson }}\n{{ none | tojson }}"),
    ("strftime_now_directives", "user_only",
     "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%B %d, %Y') }}|"
     "{{ strftime_now('%A %a %H:%M:%S %I %p %j %y %m %%') }}|{{ strftime_now('%-d %-m %e') }}"),
    ("loop_controls", "multi_turn",
     "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
     "{{ m.role }};{% if m.role == 'assistant' %}{% break %}{% endif %}{% endfor %}"),
    ("namespace_slices_and_tests", "multi_turn",
     "{% set ns = namespace(n=0, last=none) %}"
     "{% for m in messages[::-1] %}{% set ns.n = ns.n + 1 %}"
     "{% if ns.last is none and m.role == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
     "{{ ns.n }}/{{ ns.last }}/{{ messages[1:] | length }}/{{ messages[-1].content }}/"
     "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}/"
     "{{ messages | map(attribute='role') | reject('equalto', 'system') | join(',') }}/"
     "{{ 'tool_calls' in messages[0] }}/{{ messages[0].tool_calls is defined }}/"
     "{{ messages[0].content is string }}/{{ messages[0] is mapping }}/{{ messages is iterable }}"),
    ("raise_exception_refuses", "user_only",
     "{% if messages[0].role == 'user' %}{{ raise_exception('No users allowed here') }}{% endif %}ok"),
]


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' override of jinja2's tojson: json.dumps, no HTML escaping."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


class AssistantTracker(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` tag: it records which tokens the
    assistant wrote (for training masks, not used here) and renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        call = self.call_method("_generation_support")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _generation_support(self, caller):
        return caller()


def environment():
    """transformers' `_compile_jinja_template` environment."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: NOW.strftime(fmt)
    return env


def render(source, bos, eos, messages, add_generation_prompt):
    """The text, or the refusal, as {"expected": ...} or {"error": ...}."""
    template = environment().from_string(source)
    try:
        # What apply_chat_template passes: the messages, tools and documents (None without
        # any), add_generation_prompt and the tokenizer's special tokens.
        text = template.render(messages=messages, tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt,
                               bos_token=bos, eos_token=eos)
    except jinja2.exceptions.TemplateError as e:
        if type(e) is not jinja2.exceptions.TemplateError:
            raise  # a syntax or undefined error is a broken case, not a refusal
        return {"error": str(e)}
    return {"expected": text}


def main():
    default = os.environ.get("GENQ_LLAMACPP_SRC",
                             str(ROOT / ".cache" / "llamacpp" / "src" / "vendor" / "llama.cpp"))
    llamacpp = Path(sys.argv[1] if len(sys.argv) > 1 else default)
    templates_dir = llamacpp / "models" / "templates"
    if not templates_dir.is_dir():
        sys.exit(f"{templates_dir} missing: run scripts/fetch-llamacpp-src.sh")
    conversations = {name: (agp, messages) for name, agp, messages in CONVERSATIONS}

    templates = []
    for file, (bos, eos) in TEMPLATES.items():
        source = (templates_dir / file).read_text(encoding="utf-8")
        cases = []
        for name, agp, messages in CONVERSATIONS:
            case = {"name": name, "add_generation_prompt": agp, "messages": messages}
            case.update(render(source, bos, eos, messages, agp))
            cases.append(case)
        templates.append({"file": file, "bos_token": bos, "eos_token": eos, "cases": cases})

    snippets = []
    for name, conversation, source in SNIPPETS:
        agp, messages = conversations[conversation]
        case = {"name": name, "source": source, "bos_token": "<s>", "eos_token": "</s>",
                "add_generation_prompt": agp, "messages": messages}
        case.update(render(source, "<s>", "</s>", messages, agp))
        snippets.append(case)

    fixture = {
        "generator": "scripts/chat-template-reference.py",
        "renderer": f"jinja2 {jinja2.__version__}, set up as transformers' apply_chat_template",
        "llama_cpp_templates": "models/templates/ of the llama.cpp sources "
                               "(scripts/fetch-llamacpp-src.sh)",
        "now": NOW.isoformat(),
        "templates": templates,
        "snippets": snippets,
    }
    FIXTURE.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    refused = sum("error" in c for t in templates for c in t["cases"])
    print(f"{FIXTURE.relative_to(ROOT)}: {len(templates)} templates x {len(CONVERSATIONS)} "
          f"conversations ({refused} refused), {len(snippets)} snippets")


if __name__ == "__main__":
    main()
