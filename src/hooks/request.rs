//! One incoming request as the rules and the command see it: headers (canonical names, first
//! value), query, payload parsed by content type (JSON, form, XML, multipart), the raw body, the
//! method and the sender's address; and the lookup of every argument source.

use bytes::Bytes;

use super::definition::{Argument, Hook, Source, canonical_header};
use super::value::{self, Lookup, Object, Value};

/// A request, parsed for one hook.
#[derive(Debug, Clone, Default)]
pub struct HookRequest {
    /// Short id for log lines.
    pub id: String,
    /// The method, as sent.
    pub method: String,
    /// The sender, `ip:port`.
    pub remote_addr: String,
    /// The content type the payload was parsed as.
    pub content_type: String,
    /// The raw body (empty for multipart, as in adnanh, which never reads it whole).
    pub body: Bytes,
    /// Headers by canonical name, first value.
    pub headers: Object,
    /// Query parameters, first value.
    pub query: Object,
    /// The parsed payload; `None` when nothing was parsed (Go's nil map, `null` in JSON).
    pub payload: Option<Object>,
    /// Treat signature errors inside `or` as plain mismatches.
    pub allow_signature_errors: bool,
}

/// Headers as adnanh's map: canonical names, the first value of each, `Host` left out (Go keeps
/// it apart from the header map).
pub fn headers_map(headers: &http::HeaderMap) -> Object {
    let mut map = Object::new();
    for name in headers.keys() {
        if name == http::header::HOST {
            continue;
        }
        if let Some(v) = headers.get(name) {
            map.insert(
                canonical_header(name.as_str()),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            );
        }
    }
    map
}

/// `a=1&b=2` → first value of each key, `+` as space, percent-decoded.
pub fn query_map(query: &str) -> Object {
    let mut map = Object::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        map.entry(k.into_owned())
            .or_insert_with(|| Value::String(v.into_owned()));
    }
    map
}

/// Parse a JSON payload: an array becomes `{"root": [...]}`, as in adnanh.
pub fn parse_json_payload(body: &[u8]) -> Result<Option<Object>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let parsed = value::parse(body);
    match (first, parsed) {
        (Some(b'['), Ok(v)) => Ok(Some(Object::from([("root".to_string(), v)]))),
        (_, Ok(Value::Object(m))) => Ok(Some(m)),
        (_, Ok(Value::Null)) => Ok(None),
        (_, Ok(_)) => Err("error parsing JSON payload: the body is not a JSON object".into()),
        (Some(b'['), Err(e)) => Err(format!("error parsing JSON array payload {e}")),
        (_, Err(e)) => Err(format!("error parsing JSON payload {e}")),
    }
}

/// Parse `x-www-form-urlencoded`.
pub fn parse_form_payload(body: &[u8]) -> Object {
    query_map(&String::from_utf8_lossy(body))
}

/// Parse XML into adnanh's map (mxj): the root element's name as the only key, attributes as
/// `-name`, text beside attributes or children as `#text`, repeated elements as arrays.
pub fn parse_xml_payload(body: &[u8]) -> Result<Object, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    // (name, attributes+children, text)
    let mut stack: Vec<(String, Object, String)> = Vec::new();
    let mut buf = Vec::new();
    let version = quick_xml::XmlVersion::Implicit1_0;
    let open = |e: &quick_xml::events::BytesStart<'_>| -> Result<(String, Object, String), String> {
        let mut attrs = Object::new();
        for a in e.attributes() {
            let a = a.map_err(|e| format!("error parsing XML payload: {e}"))?;
            let v = a
                .normalized_value(version)
                .map_err(|e| format!("error parsing XML payload: {e}"))?;
            let key = a.key.local_name();
            let key: &str = key.as_ref();
            attrs.insert(format!("-{key}"), Value::String(v.into_owned()));
        }
        let name = e.local_name();
        let name: &str = name.as_ref();
        Ok((name.to_string(), attrs, String::new()))
    };
    fn close(stack: &mut [(String, Object, String)], done: (String, Object, String)) -> Option<Object> {
        let (name, fields, text) = done;
        // Text is trimmed as a whole, so `a &amp; b` keeps its inner spaces.
        let text = text.trim().to_string();
        let v = if fields.is_empty() {
            Value::String(text)
        } else {
            let mut fields = fields;
            if !text.is_empty() {
                fields.insert("#text".into(), Value::String(text));
            }
            Value::Object(fields)
        };
        match stack.last_mut() {
            Some((_, parent, _)) => {
                match parent.remove(&name) {
                    None => parent.insert(name, v),
                    Some(Value::Array(mut items)) => {
                        items.push(v);
                        parent.insert(name, Value::Array(items))
                    }
                    Some(prev) => parent.insert(name, Value::Array(vec![prev, v])),
                };
                None
            }
            None => Some(Object::from([(name, v)])),
        }
    }
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("error parsing XML payload: {e}"))?;
        match event {
            Event::Start(e) => stack.push(open(&e)?),
            Event::Empty(e) => {
                let el = open(&e)?;
                if let Some(root) = close(&mut stack, el) {
                    return Ok(root);
                }
            }
            Event::End(_) => {
                let Some(el) = stack.pop() else {
                    return Err("error parsing XML payload: unexpected end tag".into());
                };
                if let Some(root) = close(&mut stack, el) {
                    return Ok(root);
                }
            }
            Event::Text(t) => {
                let t = t.xml_content(version);
                if let Some((_, _, text)) = stack.last_mut() {
                    text.push_str(&t);
                }
            }
            Event::CData(t) => {
                if let Some((_, _, text)) = stack.last_mut() {
                    text.push_str(&t.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                let name = r.into_inner().into_owned();
                let resolved = match name.as_str() {
                    "lt" => "<".to_string(),
                    "gt" => ">".to_string(),
                    "amp" => "&".to_string(),
                    "apos" => "'".to_string(),
                    "quot" => "\"".to_string(),
                    n => n
                        .strip_prefix("#x")
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .or_else(|| n.strip_prefix('#').and_then(|d| d.parse().ok()))
                        .and_then(char::from_u32)
                        .map(String::from)
                        .unwrap_or_default(),
                };
                if let Some((_, _, text)) = stack.last_mut() {
                    text.push_str(&resolved);
                }
            }
            Event::Eof => return Err("error parsing XML payload: EOF".into()),
            _ => {}
        }
        buf.clear();
    }
}

/// Parse `multipart/form-data`: form values as strings (first of each name); file parts only
/// when they are JSON (`Content-Type: application/json`, or named in `parse-parameters-as-json`),
/// decoded into objects. Other files are not part of the payload, as in adnanh.
pub async fn parse_multipart_payload(content_type: &str, body: Bytes, hook: &Hook) -> Result<Object, String> {
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| format!("error parsing multipart form: {e}"))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut payload = Object::new();
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| format!("error parsing multipart form: {e}"))?
    {
        let Some(name) = field.name().map(str::to_owned) else {
            continue;
        };
        let is_file = field.file_name().is_some();
        let is_json = field
            .content_type()
            .is_some_and(|m| m.essence_str() == "application/json");
        let data = field
            .bytes()
            .await
            .map_err(|e| format!("error parsing multipart form: {e}"))?;
        if !is_file {
            payload
                .entry(name)
                .or_insert_with(|| Value::String(String::from_utf8_lossy(&data).into_owned()));
            continue;
        }
        let forced = hook
            .json_parameters
            .iter()
            .any(|a| a.source == Source::Payload && a.name == name);
        if is_json || forced {
            let v = match value::parse(&data) {
                Ok(v @ Value::Object(_)) => v,
                _ => Value::Null,
            };
            payload.entry(name).or_insert(v);
        }
    }
    Ok(payload)
}

impl HookRequest {
    /// The value of one argument, as text.
    pub fn get(&self, arg: &Argument) -> Result<String, Lookup> {
        let lookup =
            |map: &Object| -> Result<String, Lookup> { Ok(value::get_in_object(&arg.name, map)?.to_arg()) };
        match arg.source {
            Source::Header => lookup(&self.headers),
            Source::Query => lookup(&self.query),
            Source::Payload => match &self.payload {
                Some(p) => lookup(p),
                None => Err(Lookup::NotFound(arg.name.clone())),
            },
            Source::Literal => Ok(arg.name.clone()),
            Source::RawBody => Ok(String::from_utf8_lossy(&self.body).into_owned()),
            Source::Method => Ok(self.method.clone()),
            Source::RemoteAddr => Ok(self.remote_addr.clone()),
            Source::EntirePayload => Ok(match &self.payload {
                Some(p) => value::object_to_json(p),
                None => "null".to_string(),
            }),
            Source::EntireHeaders => Ok(value::object_to_json(&self.headers)),
            Source::EntireQuery => Ok(value::object_to_json(&self.query)),
        }
    }

    /// Decode `parse-parameters-as-json` values in place so rules and arguments can address
    /// their fields. Returns one message per parameter that could not be decoded.
    pub fn parse_json_parameters(&mut self, hook: &Hook) -> Vec<String> {
        let mut errors = Vec::new();
        for arg in &hook.json_parameters {
            let text = match self.get(arg) {
                Ok(t) => t,
                Err(_) => {
                    errors.push(format!("couldn't retrieve argument for {}", describe(arg)));
                    continue;
                }
            };
            let decoded = match value::parse(text.as_bytes()) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    errors.push(format!("{}: the value is not a JSON object", describe(arg)));
                    continue;
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", describe(arg)));
                    continue;
                }
            };
            let target = match arg.source {
                Source::Header => Some(&mut self.headers),
                Source::Query => Some(&mut self.query),
                Source::Payload => self.payload.as_mut(),
                _ => {
                    errors.push(format!("invalid source for argument {}", describe(arg)));
                    continue;
                }
            };
            if let Some(map) = target {
                value::replace_in_object(&arg.name, map, decoded);
            }
        }
        errors
    }
}

/// An argument for log lines: `payload commits.0.id`.
pub fn describe(arg: &Argument) -> String {
    format!("{:?} {}", arg.source, arg.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::definition::parse as parse_hooks;

    fn arg(source: Source, name: &str) -> Argument {
        Argument {
            source,
            name: name.into(),
            envname: String::new(),
            base64decode: false,
        }
    }

    #[test]
    fn json_array_payload_is_under_root() {
        let p = parse_json_payload(b" [1, {\"a\": 2}]").unwrap().unwrap();
        assert_eq!(value::get_in_object("root.1.a", &p).unwrap().to_arg(), "2");
        assert_eq!(parse_json_payload(b"null").unwrap(), None);
        assert!(parse_json_payload(b"\"text\"").is_err());
        assert!(parse_json_payload(b"{").is_err());
    }

    #[test]
    fn xml_like_mxj() {
        let p = parse_xml_payload(
            br#"<?xml version="1.0"?><app id="1"><users><user>a</user><user>b &amp; c</user></users><name lang="pt">Ponte</name><empty/></app>"#,
        )
        .unwrap();
        let get = |k: &str| value::get_in_object(k, &p).unwrap().to_arg();
        assert_eq!(get("app.-id"), "1");
        assert_eq!(get("app.users.user.1"), "b & c");
        assert_eq!(get("app.name.#text"), "Ponte");
        assert_eq!(get("app.name.-lang"), "pt");
        assert_eq!(get("app.empty"), "");
        assert!(parse_xml_payload(b"<a><b></a>").is_err());
    }

    #[test]
    fn form_and_query_keep_the_first_value() {
        let q = query_map("a=1&a=2&b=x+y%21");
        assert_eq!(q["a"], Value::String("1".into()));
        assert_eq!(q["b"], Value::String("x y!".into()));
        assert_eq!(parse_form_payload(b"k=v")["k"], Value::String("v".into()));
    }

    #[tokio::test]
    async fn multipart_values_and_json_files() {
        let (hooks, _) = parse_hooks(
            "- id: a\n  execute-command: x\n  parse-parameters-as-json: [{source: payload, name: forced}]\n",
            "f",
        )
        .unwrap();
        let body = "--B\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n--B\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"d.json\"\r\nContent-Type: application/json\r\n\r\n{\"k\": 1}\r\n--B\r\nContent-Disposition: form-data; name=\"forced\"; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\n{\"z\": true}\r\n--B\r\nContent-Disposition: form-data; name=\"bin\"; filename=\"b.bin\"\r\n\r\nxx\r\n--B--\r\n";
        let p = parse_multipart_payload("multipart/form-data; boundary=B", Bytes::from(body), &hooks[0])
            .await
            .unwrap();
        assert_eq!(p["field"], Value::String("value".into()));
        assert_eq!(value::get_in_object("doc.k", &p).unwrap().to_arg(), "1");
        assert_eq!(value::get_in_object("forced.z", &p).unwrap().to_arg(), "true");
        assert!(!p.contains_key("bin"));
    }

    #[test]
    fn sources_and_json_parameters() {
        let mut h = http::HeaderMap::new();
        h.insert("x-data", http::HeaderValue::from_static("{\"n\": 5}"));
        h.insert("host", http::HeaderValue::from_static("example.com"));
        let mut req = HookRequest {
            method: "POST".into(),
            remote_addr: "1.2.3.4:5".into(),
            body: Bytes::from_static(b"raw"),
            headers: headers_map(&h),
            query: query_map("q=1"),
            payload: parse_json_payload(b"{\"inner\": \"{\\\"deep\\\": [7]}\"}").unwrap(),
            ..Default::default()
        };
        assert_eq!(
            req.get(&arg(Source::Header, "Host")),
            Err(Lookup::NotFound("Host".into()))
        );
        assert_eq!(req.get(&arg(Source::Method, "method")).unwrap(), "POST");
        assert_eq!(req.get(&arg(Source::RawBody, "")).unwrap(), "raw");
        assert_eq!(req.get(&arg(Source::EntireQuery, "")).unwrap(), r#"{"q":"1"}"#);
        assert_eq!(req.get(&arg(Source::Literal, "lit")).unwrap(), "lit");
        let (hooks, _) = parse_hooks(
            "- id: a\n  execute-command: x\n  parse-parameters-as-json: [{source: header, name: x-data}, {source: payload, name: inner}, {source: string, name: s}]\n",
            "f",
        )
        .unwrap();
        let errors = req.parse_json_parameters(&hooks[0]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(req.get(&arg(Source::Header, "X-Data.n")).unwrap(), "5");
        assert_eq!(req.get(&arg(Source::Payload, "inner.deep.0")).unwrap(), "7");
        let empty = HookRequest::default();
        assert_eq!(empty.get(&arg(Source::EntirePayload, "")).unwrap(), "null");
    }
}
