//! The small block-style YAML subset the shipped manifests the Rust tests read are written in
//! (mappings, `- ` sequences, `[a, b]` flow sequences, plain or quoted scalars, comments, `---`).
//! The workspace has no YAML crate; this panics on anything else, so a change of style fails here
//! loudly instead of being read wrong.

use serde_json::{Map, Value};

struct Line {
    indent: usize,
    text: String,
}

/// The documents of a YAML stream in the subset described in the module docs.
pub fn parse_documents(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current: Vec<Line> = Vec::new();
    for raw in text.lines() {
        if raw.trim_end() == "---" {
            docs.push(std::mem::take(&mut current));
            continue;
        }
        let content = strip_comment(raw);
        if content.trim().is_empty() {
            continue;
        }
        assert!(!content.contains('\t'), "tabs in {raw:?}");
        let indent = content.len() - content.trim_start().len();
        current.push(Line {
            indent,
            text: content.trim().to_string(),
        });
    }
    docs.push(current);
    docs.into_iter()
        .filter(|d| !d.is_empty())
        .map(|mut lines| {
            let mut i = 0;
            let indent = lines[0].indent;
            let v = block(&mut lines, &mut i, indent);
            assert_eq!(
                i,
                lines.len(),
                "unparsed YAML from {:?}",
                lines[i.min(lines.len() - 1)].text
            );
            v
        })
        .collect()
}

fn strip_comment(line: &str) -> &str {
    let mut quoted = None;
    for (i, c) in line.char_indices() {
        match (quoted, c) {
            (None, '"' | '\'') => quoted = Some(c),
            (Some(q), c) if c == q => quoted = None,
            (None, '#') if i == 0 || line[..i].ends_with(' ') => return &line[..i],
            _ => {}
        }
    }
    line
}

fn block(lines: &mut [Line], i: &mut usize, indent: usize) -> Value {
    if lines[*i].text.starts_with("- ") || lines[*i].text == "-" {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].indent == indent && lines[*i].text.starts_with('-') {
            let rest = lines[*i].text[1..].trim_start().to_string();
            assert!(!rest.is_empty(), "an empty sequence item");
            if rest.contains(": ") || rest.ends_with(':') {
                // A mapping item: its first key is on the dash's line.
                lines[*i] = Line {
                    indent: indent + 2,
                    text: rest,
                };
                items.push(block(lines, i, indent + 2));
            } else {
                items.push(scalar(&rest));
                *i += 1;
            }
        }
        return Value::Array(items);
    }
    let mut map = Map::new();
    while *i < lines.len() && lines[*i].indent == indent && !lines[*i].text.starts_with('-') {
        let text = lines[*i].text.clone();
        let (key, rest) = match text.split_once(": ") {
            Some((k, r)) => (k.to_string(), r.trim().to_string()),
            None => (
                text.strip_suffix(':')
                    .unwrap_or_else(|| panic!("not a mapping entry: {text:?}"))
                    .to_string(),
                String::new(),
            ),
        };
        *i += 1;
        let value = if !rest.is_empty() {
            scalar(&rest)
        } else if *i < lines.len()
            && (lines[*i].indent > indent
                || (lines[*i].indent == indent && lines[*i].text.starts_with('-')))
        {
            let inner = lines[*i].indent;
            block(lines, i, inner)
        } else {
            Value::Null
        };
        map.insert(key, value);
    }
    Value::Object(map)
}

fn scalar(s: &str) -> Value {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return Value::Array(
            inner
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(scalar)
                .collect(),
        );
    }
    assert!(
        !s.starts_with('{') && !s.starts_with('|') && !s.starts_with('>'),
        "unsupported YAML {s:?}"
    );
    let unquoted = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .unwrap_or(s);
    Value::String(unquoted.to_string())
}
