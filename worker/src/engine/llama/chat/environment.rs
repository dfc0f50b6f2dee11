//! The template environment: minijinja set up to render as transformers' `apply_chat_template`
//! (its `_compile_jinja_template`) renders with jinja2.
//!
//! - `trim_blocks`, `lstrip_blocks`, a single trailing newline dropped (jinja2's default);
//! - `{% break %}` / `{% continue %}` (jinja2's `loopcontrols` extension): minijinja's
//!   `loop_controls` feature;
//! - Python's str, dict and list methods (`.strip()`, `.split()`, `.startswith()`, `.items()`,
//!   `.get()`): `minijinja-contrib`'s `pycompat` callback for unknown methods;
//! - `raise_exception(message)`, `strftime_now(format)` (on the template's [`Clock`]) and
//!   transformers' `tojson` ([`super::json`]);
//! - values printed, and turned `|string`, as Python's `str()` ([`super::pyrepr`]): `None`,
//!   `['a']`.
//!
//! - `none is iterable` false, as in Python (minijinja iterates `none` as empty);
//! - transformers' `{% generation %}…{% endgeneration %}` (it marks the assistant's tokens for
//!   training masks and renders its body unchanged): minijinja takes no custom tags, so
//!   [`translate_generation_tags`] turns them into `{% if true %}…{% endif %}` before compiling.

use std::borrow::Cow;

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};

use super::clock::Clock;
use super::{json, pyrepr};

/// An environment configured like `transformers`' for chat templates, reading `clock` for
/// `strftime_now`.
pub(super) fn environment(clock: Clock) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        if let Some(s) = value.as_str() {
            out.write_str(s)?;
        } else if !value.is_undefined() {
            out.write_str(&pyrepr::repr(value))?;
        }
        Ok(())
    });
    env.add_filter("tojson", json::tojson);
    env.add_filter("string", |value: &Value| pyrepr::str(value));
    env.add_test("iterable", |value: &Value| {
        !value.is_none() && value.try_iter().is_ok()
    });
    env.add_function("raise_exception", raise_exception);
    set_clock(&mut env, clock);
    env
}

/// `source` with each `{% generation %}` / `{% endgeneration %}` tag written as `{% if true %}`
/// / `{% endif %}`, keeping its whitespace control (`{%- generation -%}`), which renders the
/// same text as transformers' `AssistantTracker` extension.
pub(super) fn translate_generation_tags(source: &str) -> Cow<'_, str> {
    if !source.contains("generation") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let (before, tag) = rest.split_at(open);
        out.push_str(before);
        // `{%`, an optional `-`/`+`, spaces, the tag's name, spaces, an optional `-`/`+`, `%}`.
        let body = &tag[2..];
        let name_start = body.len() - body.trim_start_matches(['-', '+']).len();
        let after_marker = &body[name_start..];
        let name_at = name_start + (after_marker.len() - after_marker.trim_start().len());
        let name_end = body[name_at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(body.len(), |n| name_at + n);
        let closes = body[name_end..]
            .trim_start()
            .trim_start_matches(['-', '+'])
            .starts_with("%}");
        let replacement = match &body[name_at..name_end] {
            "generation" if closes => Some("if true"),
            "endgeneration" if closes => Some("endif"),
            _ => None,
        };
        out.push_str("{%");
        match replacement {
            Some(r) => {
                out.push_str(&body[..name_at]);
                out.push_str(r);
                rest = &body[name_end..];
            }
            None => rest = body,
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Makes `strftime_now` read `clock`.
pub(super) fn set_clock(env: &mut Environment<'static>, clock: Clock) {
    env.add_function("strftime_now", move |format: String| {
        clock.now().strftime(&format)
    });
}

/// What `raise_exception(message)` raised: the source of the render error, so that a refusal
/// can be told from a broken template.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Raised(pub(super) String);

/// `raise_exception(message)`, as `transformers` defines it for templates: rendering fails
/// with `message`.
fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_a_block_that_renders_its_body() {
        let source =
            "{%- for m in messages -%}\n{%- generation -%}\n  {{ m }}\n{% endgeneration %}\n\
                      {%- endfor %}{% if x %}{{ 'generation' }}{% endif %}";
        assert_eq!(
            translate_generation_tags(source),
            "{%- for m in messages -%}\n{%- if true -%}\n  {{ m }}\n{% endif %}\n\
             {%- endfor %}{% if x %}{{ 'generation' }}{% endif %}"
        );
        assert!(matches!(
            translate_generation_tags("{% if a %}b{% endif %}"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn none_is_not_iterable_but_undefined_is_as_in_jinja2() {
        let env = environment(Clock::System);
        let out = env
            .render_str(
                "{{ none is iterable }} {{ nothing is iterable }} {{ [] is iterable }} \
                 {{ 'ab' is iterable }} {{ 1 is iterable }}",
                (),
            )
            .expect("render");
        assert_eq!(out, "False True True True False");
    }
}
