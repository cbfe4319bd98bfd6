//! `-template`: the hooks file is rendered as a Go `text/template` before it is parsed, with
//! adnanh 2.8's functions `getenv NAME`, `cat PATH` and `credential NAME` beside Go's built-ins
//! (`js` and `html` included, which the template engine crate lacks).

use gtmpl::{Context, Func, FuncError, Template, Value};

/// Render `text` with no data (`.` is empty), as adnanh does.
pub fn render(text: &str) -> Result<String, String> {
    let mut tmpl = Template::default();
    let funcs: [(&str, Func); 5] = [
        ("getenv", getenv),
        ("cat", cat),
        ("credential", credential),
        ("js", js),
        ("html", html),
    ];
    tmpl.add_funcs(&funcs);
    tmpl.parse(text).map_err(|e| e.to_string())?;
    tmpl.render(&Context::empty()).map_err(|e| e.to_string())
}

fn one_string(name: &str, args: &[Value]) -> Result<String, FuncError> {
    match args {
        [Value::String(s)] => Ok(s.clone()),
        [other] => Ok(other.to_string()),
        _ => Err(FuncError::ExactlyXArgs(name.to_string(), 1)),
    }
}

/// The environment variable, or "" when unset.
fn getenv(args: &[Value]) -> Result<Value, FuncError> {
    let name = one_string("getenv", args)?;
    Ok(Value::from(std::env::var(name).unwrap_or_default()))
}

/// A file's contents without its trailing newline, or "" when it cannot be read.
fn cat(args: &[Value]) -> Result<Value, FuncError> {
    let path = one_string("cat", args)?;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    Ok(Value::from(text.trim_end_matches(['\r', '\n']).to_string()))
}

/// systemd's `LoadCredential`: `$CREDENTIALS_DIRECTORY/NAME`, or the environment variable NAME
/// when there is no credentials directory.
fn credential(args: &[Value]) -> Result<Value, FuncError> {
    let name = one_string("credential", args)?;
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => {
            let text = std::fs::read_to_string(std::path::Path::new(&dir).join(&name)).unwrap_or_default();
            Ok(Value::from(text.trim_end_matches(['\r', '\n']).to_string()))
        }
        None => Ok(Value::from(std::env::var(name).unwrap_or_default())),
    }
}

fn joined(args: &[Value]) -> String {
    args.iter()
        .map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("")
}

/// Go's `js`: escape for a JavaScript (and so JSON) string literal.
fn js(args: &[Value]) -> Result<Value, FuncError> {
    let mut out = String::new();
    for c in joined(args).chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    Ok(Value::from(out))
}

/// Go's `html`: escape for HTML text.
fn html(args: &[Value]) -> Result<Value, FuncError> {
    let mut out = String::new();
    for c in joined(args).chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    Ok(Value::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_and_builtins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = format!(
            "a: {{{{ cat \"{}\" }}}}\nb: \"{{{{ \"q\\\"<x>\" | js }}}}\"\nc: {{{{ cat \"/nonexistent/x\" }}}}|\n{{{{- /* comment */ -}}}}\nd: {{{{ if eq 1 1 }}}}yes{{{{ else }}}}no{{{{ end }}}}\ne: {{{{ getenv \"PONTE_TEMPLATE_TEST_UNSET_VAR\" }}}}|\nf: {{{{ html \"<a href='x'>\" }}}}",
            file.display()
        );
        let out = render(&text).unwrap();
        assert!(out.contains("a: from-file\n"), "{out}");
        assert!(out.contains(r#"b: "q\"\u003Cx\u003E""#), "{out}");
        assert!(out.contains("c: |d: yes"), "{out}");
        assert!(out.contains("e: |"), "{out}");
        assert!(out.contains("f: &lt;a href=&#39;x&#39;&gt;"), "{out}");
        assert!(render("{{ nosuchfunc }}").is_err());
        assert!(render("{{ if }}").is_err());
    }
}
