//! The pages' words, in two catalogues (`i18n/en.json`, `i18n/pt-BR.json`) built into the
//! binary. Templates and handlers ask for a key with `t.s("key")` (or `t.f1`/`t.f2` for texts
//! with `{0}`/`{1}`); a test checks that both catalogues have the same keys and that every key
//! asked for exists.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::LazyLock;

use crate::locale::Lang;

static EN: LazyLock<HashMap<String, String>> = LazyLock::new(|| load(include_str!("i18n/en.json")));
static PT_BR: LazyLock<HashMap<String, String>> = LazyLock::new(|| load(include_str!("i18n/pt-BR.json")));

fn load(text: &str) -> HashMap<String, String> {
    // Built into the binary and checked by the tests below: a broken catalogue cannot ship.
    serde_json::from_str(text).unwrap_or_default()
}

/// The words of one language.
#[derive(Clone, Copy)]
pub struct Tr {
    lang: Lang,
    table: &'static HashMap<String, String>,
}

impl Tr {
    /// The catalogue of `lang`.
    pub fn new(lang: Lang) -> Self {
        let table = match lang {
            Lang::En => &*EN,
            Lang::PtBr => &*PT_BR,
        };
        Tr { lang, table }
    }

    /// The language.
    pub fn lang(&self) -> Lang {
        self.lang
    }

    /// The text for `key` (the key itself if it is missing, which the tests rule out).
    pub fn s<'a>(&self, key: &'a str) -> &'a str
    where
        'static: 'a,
    {
        self.table.get(key).map(String::as_str).unwrap_or(key)
    }

    /// The text for `key` with `{0}` replaced.
    pub fn f1(&self, key: &str, a: impl Display) -> String {
        self.s(key).replace("{0}", &a.to_string())
    }

    /// The text for `key` with `{0}` and `{1}` replaced.
    pub fn f2(&self, key: &str, a: impl Display, b: impl Display) -> String {
        self.f1(key, a).replace("{1}", &b.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every file that asks for words: the templates and the handlers.
    const USERS: &[(&str, &str)] = &[
        ("base.html", include_str!("templates/base.html")),
        (
            "inspector_list.html",
            include_str!("templates/inspector_list.html"),
        ),
        (
            "inspector_detail.html",
            include_str!("templates/inspector_detail.html"),
        ),
        (
            "inspector_edit.html",
            include_str!("templates/inspector_edit.html"),
        ),
        (
            "inspector_message.html",
            include_str!("templates/inspector_message.html"),
        ),
        (
            "inspector_status.html",
            include_str!("templates/inspector_status.html"),
        ),
        ("console_nav.html", include_str!("templates/console_nav.html")),
        ("body.html", include_str!("templates/body.html")),
        ("headers.html", include_str!("templates/headers.html")),
        ("console_login.html", include_str!("templates/console_login.html")),
        (
            "console_overview.html",
            include_str!("templates/console_overview.html"),
        ),
        (
            "console_detail.html",
            include_str!("templates/console_detail.html"),
        ),
        (
            "console_message.html",
            include_str!("templates/console_message.html"),
        ),
        ("inspector.rs", include_str!("inspector.rs")),
        ("inspector/pages.rs", include_str!("inspector/pages.rs")),
        ("inspector/replay.rs", include_str!("inspector/replay.rs")),
        ("console.rs", include_str!("console.rs")),
        ("console/pages.rs", include_str!("console/pages.rs")),
        ("page.rs", include_str!("page.rs")),
    ];

    /// The keys a file asks for: the string literal opening `t.s(`, `t.f1(` or `t.f2(`.
    fn keys_used(text: &str) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for call in ["t.s(", "t.f1(", "t.f2("] {
            for (i, _) in text.match_indices(call) {
                // rustfmt may put the key on the next line.
                let rest = text[i + call.len()..].trim_start();
                if let Some(rest) = rest.strip_prefix('"')
                    && let Some(end) = rest.find('"')
                {
                    keys.insert(rest[..end].to_string());
                }
            }
        }
        keys
    }

    #[test]
    fn both_catalogues_have_the_same_keys() {
        let en: BTreeSet<_> = serde_json::from_str::<HashMap<String, String>>(include_str!("i18n/en.json"))
            .expect("en.json parses")
            .into_keys()
            .collect();
        let pt: BTreeSet<_> =
            serde_json::from_str::<HashMap<String, String>>(include_str!("i18n/pt-BR.json"))
                .expect("pt-BR.json parses")
                .into_keys()
                .collect();
        assert!(en.len() > 50, "only {} keys", en.len());
        assert_eq!(
            en.difference(&pt).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "in en.json, missing in pt-BR.json"
        );
        assert_eq!(
            pt.difference(&en).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "in pt-BR.json, missing in en.json"
        );
    }

    #[test]
    fn every_key_used_exists_and_every_key_is_used() {
        let mut used = BTreeSet::new();
        for (file, text) in USERS {
            let keys = keys_used(text);
            for key in &keys {
                assert!(
                    EN.contains_key(key),
                    "{file} asks for `{key}`, which en.json lacks"
                );
                assert!(
                    PT_BR.contains_key(key),
                    "{file} asks for `{key}`, which pt-BR.json lacks"
                );
            }
            used.extend(keys);
        }
        let unused: Vec<_> = EN.keys().filter(|k| !used.contains(*k)).collect();
        assert!(unused.is_empty(), "keys no page uses: {unused:?}");
    }

    #[test]
    fn portuguese_is_translated_with_its_accents() {
        let pt = Tr::new(Lang::PtBr);
        assert_eq!(pt.s("console.deliveries"), "Entregas");
        assert_eq!(pt.s("action.replay"), "Reenviar");
        assert_eq!(pt.s("console.waiting_for_agent"), "Aguardando o agente");
        // Nothing left in English: only names, numbers and codes may be equal.
        let en = Tr::new(Lang::En);
        let same: Vec<_> = EN
            .keys()
            .filter(|k| en.s(k) == pt.s(k) && en.s(k).chars().filter(|c| c.is_alphabetic()).count() > 4)
            .filter(|k| !ALLOWED_SAME.contains(&k.as_str()))
            .collect();
        assert!(same.is_empty(), "same text in both languages: {same:?}");
        assert_eq!(pt.f2("inspector.replay_of", 3, "x"), "reenvio de #3");
    }

    /// Words that are the same in both languages.
    const ALLOWED_SAME: &[&str] = &["app.name", "field.status", "field.host", "field.upstream"];
}
