//! How a body is shown: JSON pretty-printed, text as it is, anything else as its size and a
//! hex preview. The pages escape whatever this returns.

use serde::Serialize;

/// Bytes of each body kept for display and replay (64 KiB: a webhook fits; a file upload is
/// shown by size and its first bytes). The inspector holds at most 2 × this per exchange it keeps.
pub const BODY_CAP: usize = 64 * 1024;

/// Bytes of a binary body shown in the hex preview.
pub const HEX_PREVIEW: usize = 512;

/// A body ready to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BodyView {
    /// No bytes.
    Empty,
    /// JSON, re-indented (keys in their own order).
    Json {
        /// The indented text.
        text: String,
    },
    /// UTF-8 text.
    Text {
        /// The text.
        text: String,
    },
    /// Anything else.
    Binary {
        /// A hex dump of the first bytes: offset, 16 bytes in hex, and their printable form
        /// (`text` in JSON, like the other kinds).
        #[serde(rename = "text")]
        hex: String,
    },
}

impl BodyView {
    /// The kind, as the pages name it (`json`, `text`, `binary`, `empty`).
    pub fn kind(&self) -> &'static str {
        match self {
            BodyView::Empty => "empty",
            BodyView::Json { .. } => "json",
            BodyView::Text { .. } => "text",
            BodyView::Binary { .. } => "binary",
        }
    }

    /// The text to show.
    pub fn text(&self) -> &str {
        match self {
            BodyView::Empty => "",
            BodyView::Json { text } | BodyView::Text { text } => text,
            BodyView::Binary { hex } => hex,
        }
    }
}

/// Show `bytes`, the first bytes of a body (`whole` when they are all of it), whose
/// `Content-Type` is `content_type`.
pub fn view(bytes: &[u8], content_type: Option<&str>, whole: bool) -> BodyView {
    if bytes.is_empty() {
        return BodyView::Empty;
    }
    let declared_json = content_type.is_some_and(|c| c.to_ascii_lowercase().contains("json"));
    let looks_json = matches!(bytes.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['));
    if whole
        && (declared_json || looks_json)
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Ok(text) = serde_json::to_string_pretty(&value)
    {
        return BodyView::Json { text };
    }
    // A cut body may end inside a UTF-8 sequence: judge the text by its complete characters.
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => Some(t),
        Err(e) if !whole && e.error_len().is_none() => std::str::from_utf8(&bytes[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    match text {
        Some(t)
            if t.chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t')) =>
        {
            BodyView::Text { text: t.to_string() }
        }
        _ => BodyView::Binary {
            hex: hex_dump(&bytes[..bytes.len().min(HEX_PREVIEW)]),
        },
    }
}

/// `00000000  7b 22 61 22 …  |{"a"…|`, 16 bytes a line.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let printable: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}  {:<47}  |{printable}|\n", i * 16, hex.join(" ")));
    }
    out
}

/// A body as far as it has been seen: its first [`BODY_CAP`] bytes and its full size.
#[derive(Default, Clone)]
pub struct Captured {
    /// The first bytes.
    pub bytes: Vec<u8>,
    /// Every byte that went past.
    pub total: u64,
    /// How the body ended, once it did.
    pub end: Option<BodyEnd>,
}

impl Captured {
    /// True when every byte of the body is in [`Captured::bytes`].
    pub fn whole(&self) -> bool {
        self.end == Some(BodyEnd::Complete) && self.total as usize == self.bytes.len()
    }
}

/// How a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// It was read to its end.
    Complete,
    /// It failed or was dropped before its end (the sender or the upstream broke off).
    Cut,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_indented_in_its_own_key_order() {
        let v = view(br#"{"z":1,"a":{"b":[1,2]}}"#, Some("application/json"), true);
        assert_eq!(
            v,
            BodyView::Json {
                text: "{\n  \"z\": 1,\n  \"a\": {\n    \"b\": [\n      1,\n      2\n    ]\n  }\n}".into()
            }
        );
        // Not whole: shown as the text it is, never as half-parsed JSON.
        assert_eq!(
            view(br#"{"z":1,"#, Some("application/json"), false).kind(),
            "text"
        );
        assert_eq!(view(b"{not json", Some("application/json"), true).kind(), "text");
    }

    #[test]
    fn text_binary_and_empty() {
        assert_eq!(view(b"", None, true), BodyView::Empty);
        assert_eq!(
            view(b"a=1&b=2", Some("application/x-www-form-urlencoded"), true),
            BodyView::Text {
                text: "a=1&b=2".into()
            }
        );
        let v = view(&[0x89, b'P', b'N', b'G', 0, 1, 2], Some("image/png"), true);
        assert_eq!(
            v,
            BodyView::Binary {
                hex: format!("00000000  {:<47}  |.PNG...|\n", "89 50 4e 47 00 01 02")
            }
        );
        // A cut in the middle of "ã" is still text.
        let cut = &"não".as_bytes()[..2];
        assert_eq!(view(cut, None, false), BodyView::Text { text: "n".into() });
        let big = vec![0u8; 4096];
        assert_eq!(view(&big, None, true).text().lines().count(), HEX_PREVIEW / 16);
    }
}
